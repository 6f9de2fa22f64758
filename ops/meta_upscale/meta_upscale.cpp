// Python bindings of the phase-table meta-upscale op: argument checks, the index tables the kernels
// need, and dispatch to the CPU or CUDA launchers. The torch custom ops (metasr::table_conv and its
// backward, fake kernels, autograd, autocast) are registered in metasr_arch/ops/native.py.
// torch/csrc/utils/pybind.h (Tensor casters) instead of torch/extension.h: the whole C++ frontend
// would triple this file's compile time.
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <string>
#include <vector>

#include "meta_upscale_launch.h"

namespace metasr {
namespace {

void check_float_tensor(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.defined(), name, " must be a tensor");
  TORCH_CHECK(t.dim() == dim, name, " must be ", dim, "-D, got shape ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, name,
              " must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), name, " must be on the CPU or a CUDA device, got ", t.device());
}

void check_index_map(const at::Tensor& t, const char* name, int64_t len, const at::Tensor& like) {
  TORCH_CHECK(t.defined(), name, " must be a tensor");
  TORCH_CHECK(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but x is on ", like.device());
  TORCH_CHECK(t.numel() == len, name, " must have ", len, " entries, got ", t.numel());
}

// On the CPU the index maps are checked in full (cheap, no sync); on CUDA the kernels assert the
// phase and LR ranges on the device, and non-decreasing LR maps are the caller's contract
// (geometry.axis_projection guarantees it).
void check_maps_cpu(const at::Tensor& lr, const at::Tensor& phase, int64_t lr_len, int64_t phases, const char* axis) {
  const int64_t* l = lr.data_ptr<int64_t>();
  const int64_t* p = phase.data_ptr<int64_t>();
  for (int64_t i = 0; i < lr.numel(); ++i) {
    TORCH_CHECK(l[i] >= 0 && l[i] < lr_len, axis, "_lr[", i, "] = ", l[i], " is outside [0, ", lr_len, ")");
    TORCH_CHECK(i == 0 || l[i] >= l[i - 1], axis, "_lr must be non-decreasing, but ", axis, "_lr[", i, "] = ", l[i],
                " < ", l[i - 1]);
    TORCH_CHECK(p[i] >= 0 && p[i] < phases, axis, "_phase[", i, "] = ", p[i], " is outside the table's [0, ",
                phases, ")");
  }
}

// Checks every argument and returns the call's shape (N, C_in, h, w, H, W, Pv, Ph, k, C_out).
Shape check_args(const at::Tensor& x, const at::Tensor& table, const at::Tensor& row_lr, const at::Tensor& row_phase,
                 const at::Tensor& col_lr, const at::Tensor& col_phase) {
  check_float_tensor(x, "x", 4);
  check_float_tensor(table, "table", 6);
  TORCH_CHECK(table.scalar_type() == x.scalar_type(), "table dtype ", table.scalar_type(), " does not match x dtype ",
              x.scalar_type());
  TORCH_CHECK(table.device() == x.device(), "table is on ", table.device(), " but x is on ", x.device());
  const int64_t k = table.size(2);
  TORCH_CHECK(k >= 1 && k % 2 == 1 && table.size(3) == k, "table must be (Pv, Ph, k, k, C_in, C_out) with odd k, got ",
              table.sizes());
  TORCH_CHECK(table.size(4) == x.size(1), "table has C_in = ", table.size(4), " but x has ", x.size(1), " channels");
  const int64_t out_h = row_lr.dim() == 1 ? row_lr.numel() : -1;
  const int64_t out_w = col_lr.dim() == 1 ? col_lr.numel() : -1;
  check_index_map(row_lr, "row_lr", out_h, x);
  check_index_map(row_phase, "row_phase", out_h, x);
  check_index_map(col_lr, "col_lr", out_w, x);
  check_index_map(col_phase, "col_phase", out_w, x);
  const Shape s = make_shape(x, table, out_h, out_w);
  if (x.is_cpu()) {
    check_maps_cpu(row_lr, row_phase, s.h, s.pv, "row");
    check_maps_cpu(col_lr, col_phase, s.w, s.ph, "col");
  }
  return s;
}

// start[l] = first output index whose LR index is >= l, for l = 0..len (lr is non-decreasing).
at::Tensor lr_starts(const at::Tensor& lr, int64_t len) {
  return at::searchsorted(lr, at::arange(len + 1, lr.options()));
}

// Output indices sorted stably by phase, and where each phase's run starts (phases + 1 entries).
std::pair<at::Tensor, at::Tensor> phase_runs(const at::Tensor& phase, int64_t phases) {
  auto sorted = at::sort(phase, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  at::Tensor starts = at::searchsorted(std::get<0>(sorted), at::arange(phases + 1, phase.options()));
  return {std::get<1>(sorted).contiguous(), starts.contiguous()};
}

IndexMaps make_maps(const Shape& s, const at::Tensor& row_lr, const at::Tensor& row_phase, const at::Tensor& col_lr,
                    const at::Tensor& col_phase, bool for_grad_x, bool for_grad_table) {
  IndexMaps m;
  m.row_lr = row_lr;
  m.row_phase = row_phase;
  m.col_lr = col_lr;
  m.col_phase = col_phase;
  if (for_grad_x) {
    m.row_start = lr_starts(row_lr, s.h);
    m.col_start = lr_starts(col_lr, s.w);
  }
  if (for_grad_table) {
    std::tie(m.row_order, m.row_pstart) = phase_runs(row_phase, s.pv);
    std::tie(m.col_order, m.col_pstart) = phase_runs(col_phase, s.ph);
  }
  return m;
}

[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "this build of the metasr meta_upscale extension has no CUDA kernels (CPU-only build)");
}

}  // namespace

// out (N, C_out, H, W) from x (N, C_in, h, w), table (Pv, Ph, k, k, C_in, C_out) and the index maps.
at::Tensor table_conv_forward(const at::Tensor& x, const at::Tensor& table, const at::Tensor& row_lr,
                              const at::Tensor& row_phase, const at::Tensor& col_lr, const at::Tensor& col_phase) {
  const Shape s = check_args(x, table, row_lr, row_phase, col_lr, col_phase);
  at::Tensor out = at::empty({s.n, s.c_out, s.out_h, s.out_w}, x.options());
  if (out.numel() == 0) return out;
  const IndexMaps m = make_maps(s, row_lr, row_phase, col_lr, col_phase, false, false);
  if (x.is_cuda()) {
#ifdef METASR_WITH_CUDA
    forward_cuda(x, table, m, out);
#else
    no_cuda();
#endif
  } else {
    forward_cpu(x, table, m, out);
  }
  return out;
}

// (grad_x (N, C_in, h, w), grad_table (Pv, Ph, k, k, C_in, C_out)); a gradient that is not asked
// for comes back as an empty (0,) tensor.
std::vector<at::Tensor> table_conv_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table,
                                            const at::Tensor& row_lr, const at::Tensor& row_phase,
                                            const at::Tensor& col_lr, const at::Tensor& col_phase, bool need_x,
                                            bool need_table) {
  const Shape s = check_args(x, table, row_lr, row_phase, col_lr, col_phase);
  check_float_tensor(grad_out, "grad_out", 4);
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "grad_out dtype ", grad_out.scalar_type(),
              " does not match x dtype ", x.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "grad_out is on ", grad_out.device(), " but x is on ", x.device());
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.n, s.c_out, s.out_h, s.out_w}), "grad_out must have shape (",
              s.n, ", ", s.c_out, ", ", s.out_h, ", ", s.out_w, "), got ", grad_out.sizes());
  at::Tensor grad_x = need_x ? at::zeros_like(x) : at::empty({0}, x.options());
  at::Tensor grad_table = need_table ? at::zeros_like(table) : at::empty({0}, x.options());
  if (grad_out.numel() == 0 || (!need_x && !need_table)) return {grad_x, grad_table};
  const IndexMaps m = make_maps(s, row_lr, row_phase, col_lr, col_phase, need_x, need_table);
  if (x.is_cuda()) {
#ifdef METASR_WITH_CUDA
    if (need_x) grad_x_cuda(grad_out, x, table, m, grad_x);
    if (need_table) grad_table_cuda(grad_out, x, table, m, grad_table);
#else
    no_cuda();
#endif
  } else {
    if (need_x) grad_x_cpu(grad_out, x, table, m, grad_x);
    if (need_table) grad_table_cpu(grad_out, x, table, m, grad_table);
  }
  return {grad_x, grad_table};
}

bool with_cuda() {
#ifdef METASR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifdef METASR_WITH_CUDA
namespace {
void check_seed_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_lr,
                     const at::Tensor& col_lr) {
  TORCH_CHECK(x.is_cuda() && x.scalar_type() == at::kFloat && x.dim() == 4 && x.is_contiguous(),
              "seed_loop: x must be a contiguous 4-D float32 CUDA tensor");
  TORCH_CHECK(weight.is_cuda() && weight.scalar_type() == at::kFloat && weight.dim() == 6 && weight.is_contiguous(),
              "seed_loop: weight must be a contiguous (H, W, k, k, C_in, C_out) float32 CUDA tensor");
  TORCH_CHECK(weight.size(4) == x.size(1) && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "seed_loop: weight shape ", weight.sizes(), " does not fit x ", x.sizes());
  check_index_map(row_lr, "row_lr", weight.size(0), x);
  check_index_map(col_lr, "col_lr", weight.size(1), x);
}
}  // namespace

at::Tensor seed_loop_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_lr,
                             const at::Tensor& col_lr) {
  check_seed_args(x, weight, row_lr, col_lr);
  return seed_loop_forward_cuda(x, weight, row_lr, col_lr);
}

std::vector<at::Tensor> seed_loop_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                           const at::Tensor& row_lr, const at::Tensor& col_lr) {
  check_seed_args(x, weight, row_lr, col_lr);
  TORCH_CHECK(grad_out.is_cuda() && grad_out.scalar_type() == at::kFloat && grad_out.is_contiguous() &&
                  grad_out.dim() == 4,
              "seed_loop: grad_out must be a contiguous 4-D float32 CUDA tensor");
  return seed_loop_backward_cuda(grad_out, x, weight, row_lr, col_lr);
}
#endif

}  // namespace metasr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Meta-SR phase-table upscaling kernels (metasr_arch/ops/native.py wraps them as torch custom ops)";
  m.def("forward", &metasr::table_conv_forward, "out = table_conv(x, table, row_lr, row_phase, col_lr, col_phase)");
  m.def("backward", &metasr::table_conv_backward,
        "(grad_x, grad_table) = backward(grad_out, x, table, row_lr, row_phase, col_lr, col_phase, need_x, need_table)");
  m.def("with_cuda", &metasr::with_cuda, "whether this build has the CUDA kernels");
#ifdef METASR_WITH_CUDA
  m.def("seed_loop_forward", &metasr::seed_loop_forward, "seed-style baseline forward (benchmark only)");
  m.def("seed_loop_backward", &metasr::seed_loop_backward, "seed-style baseline backward (benchmark only)");
#endif
}
