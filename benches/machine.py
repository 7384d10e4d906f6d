"""The machine line every benchmark prints before its table."""
import os
import platform


def machine():
    cpus = os.cpu_count()
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem = 0
    return f"machine: {cpus} CPUs ({model}), {mem / 1024 / 1024:.1f} GiB RAM, {platform.system()}"
