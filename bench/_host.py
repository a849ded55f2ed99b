"""What the benchmarks report about the machine they ran on."""


def host_cpu() -> str:
    """The CPU's model name (/proc/cpuinfo), "?" where there is none."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"
