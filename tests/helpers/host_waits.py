"""What would make the host wait for a GPU, recorded while code runs on CPU or `meta` tensors."""


class HostWaits:
    """Records what would make the host wait for a GPU, in code run on CPU tensors or on `meta` tensors (which
    stand in for a device here): tensors made from host data on a device, host tensors copied to a device, device
    values read by the host (.item(), bool(), ...), and boolean-mask indexing (its size is read by the host).

    with HostWaits(device_only=False) as waits: ...; waits.seen is the list of what happened, in order. A test
    that asserts nothing was seen also calls waits.alive() inside the same `with`: a detector that stopped seeing
    would pass it otherwise."""
    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy"}

    def __init__(self, device_only=True):
        self.device_only, self.seen = device_only, []

    def __enter__(self):
        import torch
        from torch.overrides import TorchFunctionMode
        watch = self

        def on_device(t):
            return isinstance(t, torch.Tensor) and (t.device.type != "cpu" or not watch.device_only)

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                device = kwargs.get("device")
                if name in ("tensor", "as_tensor") and device is not None and torch.device(device).type != "cpu":
                    watch.seen.append(f"torch.{name}(host data, device={device})")
                elif name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu" \
                        and any(isinstance(a, (str, torch.device)) and torch.device(a).type != "cpu"
                                for a in (*args[1:], device) if a is not None):
                    watch.seen.append("host tensor .to(device)")
                elif name in watch.READS and args and on_device(args[0]):
                    watch.seen.append(f".{name}() of a device tensor")
                elif name == "__getitem__" and len(args) > 1 and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool
                        for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
                    watch.seen.append("boolean-mask indexing")
                return func(*args, **kwargs)

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)

    def alive(self) -> bool:
        """Whether a deliberate wait made now (host data made into a `meta` tensor) is seen; it is then dropped
        from `seen`. Call it inside the `with`, after the code under test."""
        import torch
        before = len(self.seen)
        torch.tensor(0, device="meta")
        caught = self.seen[before:] == ["torch.tensor(host data, device=meta)"]
        del self.seen[before:]
        return caught
