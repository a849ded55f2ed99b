"""What the recording machine's architecture changes in a trace: syscall numbers and
what a page fault's error code says.

The architecture comes from ``--arch``, else the trace's own header (perf's
``# arch :``, the ``uname -m`` a trace.dat saved), else x86-64 is assumed and the traces
row says so (``arch`` ends in ``(assumed)``).

* **Syscall numbers** (perf JSON's ``__syscall_nr``): x86-64's own table
  (arch/x86/entry/syscalls/syscall_64.tbl); arm64 and RISC-V use the generic numbers of
  include/uapi/asm-generic/unistd.h (``__NR_brk 214``, ``__NR_munmap 215``,
  ``__NR_mremap 216``, ``__NR3264_mmap 222``, ``__NR_mprotect 226``, ``__NR_madvise 233``).
* **Page faults.**  ``exceptions:page_fault_{user,kernel}`` print
  ``address=%ps ip=%ps error_code=0x%lx`` (arch/x86/include/asm/trace/exceptions.h; since
  Nam Cao's "x86/tracing: Move page fault trace points to generic", 2025, the generic
  include/trace/events/exceptions.h).  On x86 the error code is the hardware's: bit 1
  is X86_PF_WRITE (arch/x86/include/asm/trap_pf.h).  RISC-V ("riscv: mm: Add page
  fault trace points") passes ``regs->cause`` as the error code: scause 15
  (EXC_STORE_PAGE_FAULT) is a write, 13 a load and 12 an instruction fetch
  (arch/riscv/mm/fault.c: ``if (cause == EXC_STORE_PAGE_FAULT) flags |= FAULT_FLAG_WRITE``);
  the earlier posted form ``user page fault, address=%ps epc=%ps cause=0x%lx`` carries
  the same scause.  Only x86's says whether the page was present (X86_PF_PROT, bit 0)
  and whether it was an instruction fetch (X86_PF_INSTR, bit 4), which the op builder's
  fault kinds read (replay/ops.py).  arm64 has no page-fault tracepoint in mainline
  (arch/arm64/mm/fault.c calls none): its faults come from perf's ``page-faults``
  software event, and a page_fault line in an arm64 trace is kept as a fault whose
  access is unknown.
* **Kernel or user mode** of a perf ``page-faults`` sample: the sample's ip (the
  faulting pc, ``regs`` passed to perf_sw_event() in each arch's fault handler) lies in
  the kernel's half of the address space - bit 63 set - on x86-64 (canonical upper
  half), arm64 (TTBR1 range) and riscv64 (Sv39/48/57 kernel half) alike.
"""

from __future__ import annotations

import numpy as np

ARCHES = ("x86_64", "arm64", "riscv64")
DEFAULT_ARCH = "x86_64"
_ALIASES = {"x86_64": "x86_64", "x86-64": "x86_64", "amd64": "x86_64", "arm64": "arm64", "aarch64": "arm64",
            "riscv64": "riscv64", "riscv": "riscv64"}

_X86_64_SYSCALLS = {9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 25: "mremap", 28: "madvise"}
_GENERIC_SYSCALLS = {214: "brk", 215: "munmap", 216: "mremap", 222: "mmap", 226: "mprotect", 233: "madvise"}
SYSCALLS = {"x86_64": _X86_64_SYSCALLS, "arm64": _GENERIC_SYSCALLS, "riscv64": _GENERIC_SYSCALLS}

# arch/x86/include/asm/trap_pf.h, enum x86_pf_error_code
X86_PF_PROT = 1 << 0  # 0: no page found, 1: protection fault (the page is present)
X86_PF_WRITE = 1 << 1
X86_PF_USER = 1 << 2
X86_PF_INSTR = 1 << 4
RISCV_EXC_STORE_PAGE_FAULT = 15  # arch/riscv/include/asm/csr.h


def canonical_arch(name: str | None) -> str | None:
    """``aarch64`` -> ``arm64`` and so on; None for an architecture this tool does not know."""
    if not name:
        return None
    return _ALIASES.get(name.strip().lower())


def error_code_required(arch: str) -> bool:
    """Whether a page_fault line without an error code is malformed: on x86 every fault
    has one (it is the only record of read or write); elsewhere the access may be unknown."""
    return arch == "x86_64"


def fault_write(arch: str, error_code: np.ndarray) -> np.ndarray | None:
    """Write access (bool array) from page-fault error codes; None where the architecture's
    error code does not say (arm64)."""
    if arch == "x86_64":
        return (error_code & X86_PF_WRITE) != 0
    if arch == "riscv64":
        # x86's bit 1 happens to agree on the three page-fault causes (12, 13: clear;
        # 15: set), so a RISC-V trace decoded as x86 loses nothing here; this says why
        return error_code == RISCV_EXC_STORE_PAGE_FAULT
    return None


def error_code_is_x86(arch: str) -> bool:
    """Whether a fault's error code carries x86's X86_PF_PROT (present) and
    X86_PF_INSTR bits: RISC-V's is scause, which says load, store or fetch and nothing
    of whether the page was present; arm64 prints none."""
    return arch == "x86_64"


def kernel_mode_ip(ip: np.ndarray) -> np.ndarray:
    """Whether each ip lies in the kernel half of a 64-bit address space."""
    return (ip >> np.uint64(63)) != 0
