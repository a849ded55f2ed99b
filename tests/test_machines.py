"""Machine profiles: shipped data with sources, topology, placement, hand-off costs."""

import json

import pytest

from replay.machines import MachineError, all_machines, builtin_names, load_machine


def test_builtin_profiles_load_with_sources():
    assert {"broadwell-2s", "skylake-2s", "spr-1s", "zen4-1s", "local-2vcpu"} <= set(builtin_names())
    for m in all_machines():
        assert all(k in m.sources for k in m.latency_ns), m.name
    bdw = load_machine("broadwell-2s")
    assert (bdw.ncpus, bdw.adjacent_line_prefetch, bdw.latency_ns["socket_handoff"]) == (56, True, 44)


def test_cpu_numbering_and_spread_placement():
    bdw = load_machine("broadwell-2s")
    cpus = bdw.cpus()
    # Linux numbering on such boxes: CPUs 0-27 are the first threads (0-13 socket 0, 14-27 socket 1),
    # 28-55 their SMT siblings
    assert (cpus[0].socket, cpus[13].socket, cpus[14].socket, cpus[28].core) == (0, 0, 1, 0)
    place = bdw.placement(4)
    assert [cpus[c].socket for c in place] == [0, 1, 0, 1] and len({cpus[c].core for c in place}) == 4
    p30 = bdw.placement(30)
    assert len({cpus[c].core for c in p30[:28]}) == 28 and cpus[p30[28]].thread == 1  # siblings last
    packed = bdw.placement(4, policy="packed")
    assert [cpus[c].socket for c in packed] == [0, 0, 0, 0]
    assert bdw.placement(3, ncpus=2) == [bdw.placement(2, ncpus=2)[0], bdw.placement(2, ncpus=2)[1], bdw.placement(2, ncpus=2)[0]]


def test_handoff_costs_by_distance():
    bdw = load_machine("broadwell-2s")
    c = bdw.cpus()
    assert bdw.handoff_ns(c[0], c[28]) == 7.6  # SMT siblings
    assert bdw.handoff_ns(c[0], c[1]) == 44  # same socket
    assert bdw.handoff_ns(c[0], c[14]) == 118  # other socket
    zen = load_machine("zen4-1s")
    z = zen.cpus()
    assert zen.handoff_ns(z[0], z[1]) == 17 and zen.handoff_ns(z[0], z[8]) == 73  # other CCD


def test_user_profile_and_errors(tmp_path):
    p = tmp_path / "mine.toml"
    from importlib import resources
    base = (resources.files("replay.machines") / "local-2vcpu.toml").read_text()
    p.write_text(base.replace('name = "local-2vcpu"', 'name = "mine"').replace("cores_per_socket = 2", "cores_per_socket = 8"))
    assert load_machine(str(p)).ncpus == 8
    p.write_text(base.replace("owned_atomic = 5.2\n", ""))
    with pytest.raises(MachineError, match="lacks owned_atomic"):
        load_machine(str(p))
    p.write_text(base.replace('socket_handoff = "measured', 'x = "measured'))
    with pytest.raises(MachineError, match="needs a source"):
        load_machine(str(p))
    with pytest.raises(MachineError, match="unknown machine"):
        load_machine("pdp-11")


def test_machines_cli(cli):
    rc, out, _ = cli("machines", "-f", "json")
    rows = json.loads(out)
    assert rc == 0 and {r["machine"] for r in rows} >= {"broadwell-2s", "local-2vcpu"}
    rc, out, _ = cli("machines", "broadwell-2s")
    assert rc == 0 and "nviennot" in out and "MSR 0x1A4" in out
    rc, _, err = cli("machines", "nope")
    assert rc == 2 and "unknown machine" in err


def test_spread_on_fewer_cpus_uses_both_sockets_before_any_sibling():
    # kernel/sched/fair.c: the load balancer moves tasks to a sibling group with spare
    # capacity (SD_PREFER_SIBLING at the NUMA level too) and select_idle_core() prefers
    # fully idle cores, so 12 busy threads on a 2 x 14-core, 2-thread Broadwell run on 6
    # cores of each socket, one thread a core; --cpus 12 is those 12 CPUs.
    bdw = load_machine("broadwell-2s")
    cpus = bdw.cpus()
    p = bdw.placement(12, ncpus=12)
    assert sorted(cpus[c].socket for c in p) == [0] * 6 + [1] * 6
    assert len({(cpus[c].socket, cpus[c].core) for c in p}) == 12 and all(cpus[c].thread == 0 for c in p)
    # 24 threads on those 12 CPUs: two a CPU, never beyond them
    assert sorted(set(bdw.placement(24, ncpus=12))) == sorted(p)
    # 30 CPUs: all 28 cores, then two SMT siblings
    p30 = bdw.placement(30, ncpus=30)
    assert sum(cpus[c].thread for c in p30) == 2
    # packed on 12 CPUs: one socket, siblings together
    k = bdw.placement(12, ncpus=12, policy="packed")
    assert {cpus[c].socket for c in k} == {0} and len({cpus[c].core for c in k}) == 6
