import sys


def pytest_terminal_summary(terminalreporter):
    """Print what the reliability suite injected and tried."""
    for name, label in (("test_worker_faults", "faults injected by kind"), ("test_fuzz_inputs", "fuzzed inputs"), ("test_fuzz_magic", "fuzzed option lines"),
                        ("test_interrupts", "interrupts and kills"), ("test_k8s_faults", "API faults")):
        mod = sys.modules.get(f"tests.reliability.{name}") or sys.modules.get(name)
        counts = getattr(mod, "COUNTS", None) or getattr(mod, "TRIED", None)
        if counts:
            terminalreporter.write_line(f"reliability: {label}: {dict(counts)} (total {sum(counts.values())})")
