// Declarations shared by the bindings (meta_upscale.cpp) and the CPU / CUDA launchers.
// Launchers receive validated, contiguous tensors of one dtype on one device (checks live in
// meta_upscale.cpp) and fill preallocated outputs.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "meta_upscale_common.h"

namespace metasr {

// The index maps of one call and the tables derived from them (all int64, on the data's device).
struct IndexMaps {
  at::Tensor row_lr, row_phase, col_lr, col_phase;  // (H,), (H,), (W,), (W,)
  at::Tensor row_start, col_start;    // (h + 1,), (w + 1,): first output index projecting to each LR index
  at::Tensor row_order, col_order;    // (H,), (W,): output indices sorted (stably) by phase
  at::Tensor row_pstart, col_pstart;  // (Pv + 1,), (Ph + 1,): where each phase starts in *_order
};

// Most partial-sum bytes the grad_table reduction may allocate (float32 accumulators).
constexpr int64_t kPartialBudgetBytes = int64_t(256) << 20;

inline Shape make_shape(const at::Tensor& x, const at::Tensor& table, int64_t out_h, int64_t out_w) {
  Shape s;
  s.n = x.size(0);
  s.c_in = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  s.out_h = out_h;
  s.out_w = out_w;
  s.pv = table.size(0);
  s.ph = table.size(1);
  s.k = table.size(2);
  s.c_out = table.size(5);
  s.pad = (s.k - 1) / 2;
  return s;
}

// CPU (meta_upscale_cpu.cpp)
void forward_cpu(const at::Tensor& x, const at::Tensor& table, const IndexMaps& m, at::Tensor& out);
void grad_x_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                at::Tensor& grad_x);
void grad_table_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                    at::Tensor& grad_table);

#ifdef METASR_WITH_CUDA
// CUDA (meta_upscale_cuda.cu)
void forward_cuda(const at::Tensor& x, const at::Tensor& table, const IndexMaps& m, at::Tensor& out);
void grad_x_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                 at::Tensor& grad_x);
void grad_table_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                     at::Tensor& grad_table);
// Seed-style baseline for the benchmark only: float32, one thread per output pixel, read-modify-write
// on global memory, atomics in backward. weight (H, W, k, k, C_in, C_out).
at::Tensor seed_loop_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_lr,
                                  const at::Tensor& col_lr);
std::vector<at::Tensor> seed_loop_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& weight, const at::Tensor& row_lr,
                                                const at::Tensor& col_lr);
#endif

}  // namespace metasr
