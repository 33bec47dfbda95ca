"""Raw Triton kernels (@triton.jit code only), shipped inside the package as fastrnn.kernels."""
