// CUDA kernels of the phase-table meta-upscale op and the seed-style baseline (benchmark only).
//
// Each kernel is a grid-stride loop over the task indices of meta_upscale_common.h; every task
// accumulates in registers (float32 for half/bfloat16/float, float64 for double) and writes its
// result once. No atomics except in the seed-style baseline. Launches go to the current stream of
// the data's device under a device guard and are checked with C10_CUDA_KERNEL_LAUNCH_CHECK.
// Per-operator ATen headers and only c10/cuda headers keep nvcc's work small; ATen/cuda/CUDAContext.h
// would also pull in cuBLAS/cuSPARSE headers, which a minimal toolkit (nvcc + cudart) does not have.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include "meta_upscale_launch.h"

namespace metasr {
namespace {

constexpr int kThreads = 256;
// grad_table stage 1 aims at this many tasks: about 2 waves of 2048 threads on a 132-SM GPU.
constexpr int64_t kCudaTargetTasks = int64_t(1) << 19;

// Blocks for `tasks` grid-stride tasks: enough to fill the GPU a few times over, never more than
// one per kThreads tasks (the grid-stride loop covers the rest; int64 task indices throughout).
int64_t num_blocks(int64_t tasks) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return max64(1, min64(ceil_div(tasks, kThreads), int64_t(sms) * 32));
}

const int64_t* idx(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(Shape s, const scalar_t* __restrict__ x, const scalar_t* __restrict__ table,
                   const int64_t* __restrict__ row_lr, const int64_t* __restrict__ row_phase,
                   const int64_t* __restrict__ col_lr, const int64_t* __restrict__ col_phase, int64_t tasks,
                   scalar_t* __restrict__ out) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t task = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; task < tasks; task += stride)
    forward_task<scalar_t, acc_t>(s, x, table, row_lr, row_phase, col_lr, col_phase, task, out);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_x_kernel(Shape s, const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ table,
                  const int64_t* __restrict__ row_phase, const int64_t* __restrict__ col_phase,
                  const int64_t* __restrict__ row_start, const int64_t* __restrict__ col_start, int64_t tasks,
                  scalar_t* __restrict__ grad_x) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t task = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; task < tasks; task += stride)
    grad_x_task<scalar_t, acc_t>(s, grad_out, table, row_phase, col_phase, row_start, col_start, task, grad_x);
}

template <typename scalar_t, typename acc_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    grad_table_kernel(Shape s, const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
                      const int64_t* __restrict__ row_lr, const int64_t* __restrict__ col_lr,
                      const int64_t* __restrict__ row_order, const int64_t* __restrict__ row_pstart,
                      const int64_t* __restrict__ col_order, const int64_t* __restrict__ col_pstart, int64_t slices,
                      int64_t tasks, out_t* __restrict__ dst) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t task = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; task < tasks; task += stride)
    grad_table_task<scalar_t, acc_t, out_t>(s, grad_out, x, row_lr, col_lr, row_order, row_pstart, col_order,
                                            col_pstart, slices, task, dst);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    grad_table_reduce_kernel(int64_t entries, int64_t slices, const acc_t* __restrict__ partial,
                             scalar_t* __restrict__ grad_table) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t task = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; task < entries; task += stride)
    grad_table_reduce_task<scalar_t, acc_t>(entries, slices, partial, task, grad_table);
}

// ----------------------------------------------------------------------------------------------
// Seed-style baseline: what a user of the seed has. One thread per output pixel (2-D blocks), loops
// over n, k1, k2, ci, co, and `out[idx] += ...` on global memory in the innermost loop; backward
// accumulates dx with atomicAdd into a padded buffer. float32 only. Indices are int64 here (the
// seed's 32-bit overflow is a correctness bug, not a speed property worth reproducing).

__global__ void seed_forward_kernel(const float* x_pad, const float* weight, const int64_t* row_lr,
                                    const int64_t* col_lr, float* out, int64_t n, int64_t c_in, int64_t h_pad,
                                    int64_t w_pad, int64_t c_out, int64_t out_h, int64_t out_w, int64_t ks) {
  const int64_t i = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= out_h || j >= out_w) return;
  const int64_t ip = row_lr[i], jp = col_lr[j];
  for (int64_t b = 0; b < n; ++b)
    for (int64_t k1 = 0; k1 < ks; ++k1)
      for (int64_t k2 = 0; k2 < ks; ++k2)
        for (int64_t ci = 0; ci < c_in; ++ci)
          for (int64_t co = 0; co < c_out; ++co) {
            const int64_t w_idx = ((((i * out_w + j) * ks + k1) * ks + k2) * c_in + ci) * c_out + co;
            const int64_t x_idx = ((b * c_in + ci) * h_pad + ip + k1) * w_pad + jp + k2;
            const int64_t o_idx = ((b * c_out + co) * out_h + i) * out_w + j;
            out[o_idx] += weight[w_idx] * x_pad[x_idx];
          }
}

__global__ void seed_backward_kernel(const float* x_pad, const float* weight, const float* grad_out,
                                     const int64_t* row_lr, const int64_t* col_lr, float* grad_x_pad,
                                     float* grad_weight, int64_t n, int64_t c_in, int64_t h_pad, int64_t w_pad,
                                     int64_t c_out, int64_t out_h, int64_t out_w, int64_t ks) {
  const int64_t i = int64_t(blockIdx.y) * blockDim.y + threadIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= out_h || j >= out_w) return;
  const int64_t ip = row_lr[i], jp = col_lr[j];
  for (int64_t b = 0; b < n; ++b)
    for (int64_t k1 = 0; k1 < ks; ++k1)
      for (int64_t k2 = 0; k2 < ks; ++k2)
        for (int64_t ci = 0; ci < c_in; ++ci)
          for (int64_t co = 0; co < c_out; ++co) {
            const int64_t w_idx = ((((i * out_w + j) * ks + k1) * ks + k2) * c_in + ci) * c_out + co;
            const int64_t x_idx = ((b * c_in + ci) * h_pad + ip + k1) * w_pad + jp + k2;
            const int64_t o_idx = ((b * c_out + co) * out_h + i) * out_w + j;
            grad_weight[w_idx] += x_pad[x_idx] * grad_out[o_idx];
            atomicAdd(grad_x_pad + x_idx, weight[w_idx] * grad_out[o_idx]);
          }
}

}  // namespace

void forward_cuda(const at::Tensor& x, const at::Tensor& table, const IndexMaps& m, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape s = make_shape(x, table, out.size(2), out.size(3));
  const int64_t tasks = forward_tasks(s);
  if (tasks == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<num_blocks(tasks), kThreads, 0, stream>>>(
        s, x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), idx(m.row_lr), idx(m.row_phase), idx(m.col_lr),
        idx(m.col_phase), tasks, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void grad_x_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                 at::Tensor& grad_x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape s = make_shape(x, table, grad_out.size(2), grad_out.size(3));
  const int64_t tasks = grad_x_tasks(s);
  if (tasks == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_grad_x_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    grad_x_kernel<scalar_t, acc_t><<<num_blocks(tasks), kThreads, 0, stream>>>(
        s, grad_out.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), idx(m.row_phase), idx(m.col_phase),
        idx(m.row_start), idx(m.col_start), tasks, grad_x.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void grad_table_cuda(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                     at::Tensor& grad_table) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Shape s = make_shape(x, table, grad_out.size(2), grad_out.size(3));
  const int64_t entries = table_entries(s);
  if (entries == 0) return;
  const int64_t max_slices = max64(1, kPartialBudgetBytes / (4 * entries));
  const int64_t slices = grad_table_slices(s, kCudaTargetTasks, max_slices);
  const int64_t tasks = slices * grad_table_tasks_per_slice(s);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_grad_table_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    if (slices == 1) {
      grad_table_kernel<scalar_t, acc_t, scalar_t><<<num_blocks(tasks), kThreads, 0, stream>>>(
          s, gp, xp, idx(m.row_lr), idx(m.col_lr), idx(m.row_order), idx(m.row_pstart), idx(m.col_order),
          idx(m.col_pstart), 1, tasks, grad_table.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // Two stages: per-slice partial sums in the accumulator type, then an ordered sum per entry.
    at::Tensor partial = at::empty({slices, entries}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    grad_table_kernel<scalar_t, acc_t, acc_t><<<num_blocks(tasks), kThreads, 0, stream>>>(
        s, gp, xp, idx(m.row_lr), idx(m.col_lr), idx(m.row_order), idx(m.row_pstart), idx(m.col_order),
        idx(m.col_pstart), slices, tasks, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_table_reduce_kernel<scalar_t, acc_t><<<num_blocks(entries), kThreads, 0, stream>>>(
        entries, slices, partial.data_ptr<acc_t>(), grad_table.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor seed_loop_forward_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_lr,
                                  const at::Tensor& col_lr) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t ks = weight.size(2), pad = (ks - 1) / 2;
  const at::Tensor x_pad = at::constant_pad_nd(x, {pad, pad, pad, pad}, 0).contiguous();
  const int64_t n = x.size(0), c_in = x.size(1), out_h = weight.size(0), out_w = weight.size(1);
  const int64_t c_out = weight.size(5);
  at::Tensor out = at::zeros({n, c_out, out_h, out_w}, x.options());
  const dim3 block(16, 16);
  const dim3 grid(static_cast<unsigned>(ceil_div(out_w, 16)), static_cast<unsigned>(ceil_div(out_h, 16)));
  seed_forward_kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x_pad.data_ptr<float>(), weight.data_ptr<float>(), idx(row_lr), idx(col_lr), out.data_ptr<float>(), n, c_in,
      x_pad.size(2), x_pad.size(3), c_out, out_h, out_w, ks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> seed_loop_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                const at::Tensor& weight, const at::Tensor& row_lr,
                                                const at::Tensor& col_lr) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t ks = weight.size(2), pad = (ks - 1) / 2;
  const at::Tensor x_pad = at::constant_pad_nd(x, {pad, pad, pad, pad}, 0).contiguous();
  const int64_t n = x.size(0), c_in = x.size(1), out_h = weight.size(0), out_w = weight.size(1);
  const int64_t c_out = weight.size(5);
  at::Tensor grad_x_pad = at::zeros_like(x_pad);
  at::Tensor grad_weight = at::zeros_like(weight);
  const dim3 block(16, 16);
  const dim3 grid(static_cast<unsigned>(ceil_div(out_w, 16)), static_cast<unsigned>(ceil_div(out_h, 16)));
  seed_backward_kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x_pad.data_ptr<float>(), weight.data_ptr<float>(), grad_out.data_ptr<float>(), idx(row_lr), idx(col_lr),
      grad_x_pad.data_ptr<float>(), grad_weight.data_ptr<float>(), n, c_in, x_pad.size(2), x_pad.size(3), c_out,
      out_h, out_w, ks);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor grad_x = grad_x_pad.narrow(2, pad, x.size(2)).narrow(3, pad, x.size(3)).contiguous();
  return {grad_x, grad_weight};
}

}  // namespace metasr
