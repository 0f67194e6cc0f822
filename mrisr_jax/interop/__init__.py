"""PyTorch interop: torch.nn mirrors of the CASRGAN reference models and state_dict conversion.

`convert` needs only numpy; `torch_models` imports torch (an optional extra), so import it only
where torch is installed.
"""
