// Shadows <c10/cuda/CUDAException.h> in the CPU emulation build: what the .cu needs
// of it is defined in ../../cuda_emu.h (forced in with -include).
#pragma once
