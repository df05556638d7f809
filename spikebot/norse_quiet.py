"""Import norse once without its import-time warning: norse 1.1 runs ``torch.jit.script`` while importing, which
torch 2.14 deprecates, and there is nothing a spikebot user can do about it. Import this module before importing
from norse; later norse imports come from the module cache and warn no more."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import norse.torch  # noqa: F401
