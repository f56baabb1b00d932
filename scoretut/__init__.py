"""scoretut: score-based and diffusion models, small enough to read, tested against the math."""

from scoretut.runtime import default_device, device_from_arg, pick, resolve_device, run_scale

__all__ = ["default_device", "device_from_arg", "pick", "resolve_device", "run_scale"]
__version__ = "0.1.0"
