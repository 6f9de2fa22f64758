// CPU kernels of the phase-table meta-upscale op: the per-task functions of meta_upscale_common.h
// (the very code the CUDA kernels run) in at::parallel_for loops over the same task indices.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "meta_upscale_launch.h"

namespace metasr {
namespace {

// Tasks are a few hundred multiply-adds or more; this grain keeps the scheduling overhead small.
constexpr int64_t kGrain = 16;
// grad_table stage 1 aims at this many tasks (a constant, so the summation order and thus the
// result do not depend on the number of threads).
constexpr int64_t kCpuTargetTasks = int64_t(1) << 12;

const int64_t* idx(const at::Tensor& t) { return t.data_ptr<int64_t>(); }

}  // namespace

void forward_cpu(const at::Tensor& x, const at::Tensor& table, const IndexMaps& m, at::Tensor& out) {
  const Shape s = make_shape(x, table, out.size(2), out.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = table.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t *rl = idx(m.row_lr), *rp = idx(m.row_phase), *cl = idx(m.col_lr), *cp = idx(m.col_phase);
    at::parallel_for(0, forward_tasks(s), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task)
        forward_task<scalar_t, acc_t>(s, xp, tp, rl, rp, cl, cp, task, op);
    });
  });
}

void grad_x_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                at::Tensor& grad_x) {
  const Shape s = make_shape(x, table, grad_out.size(2), grad_out.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_grad_x_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* tp = table.data_ptr<scalar_t>();
    scalar_t* dp = grad_x.data_ptr<scalar_t>();
    const int64_t *rp = idx(m.row_phase), *cp = idx(m.col_phase), *rs = idx(m.row_start), *cs = idx(m.col_start);
    at::parallel_for(0, grad_x_tasks(s), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task)
        grad_x_task<scalar_t, acc_t>(s, gp, tp, rp, cp, rs, cs, task, dp);
    });
  });
}

void grad_table_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& table, const IndexMaps& m,
                    at::Tensor& grad_table) {
  const Shape s = make_shape(x, table, grad_out.size(2), grad_out.size(3));
  const int64_t entries = table_entries(s);
  const int64_t max_slices = max64(1, kPartialBudgetBytes / (4 * max64(entries, 1)));
  const int64_t slices = grad_table_slices(s, kCpuTargetTasks, max_slices);
  const int64_t tasks = slices * grad_table_tasks_per_slice(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "metasr_grad_table_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int64_t *rl = idx(m.row_lr), *cl = idx(m.col_lr), *ro = idx(m.row_order), *rps = idx(m.row_pstart),
                  *co = idx(m.col_order), *cps = idx(m.col_pstart);
    if (slices == 1) {
      scalar_t* dp = grad_table.data_ptr<scalar_t>();
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task)
          grad_table_task<scalar_t, acc_t, scalar_t>(s, gp, xp, rl, cl, ro, rps, co, cps, 1, task, dp);
      });
      return;
    }
    // Partial sums in the accumulator type (float32 for half/bfloat16), one slice after another.
    at::Tensor partial = at::empty({slices, entries}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* pp = partial.data_ptr<acc_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task)
        grad_table_task<scalar_t, acc_t, acc_t>(s, gp, xp, rl, cl, ro, rps, co, cps, slices, task, pp);
    });
    scalar_t* dp = grad_table.data_ptr<scalar_t>();
    at::parallel_for(0, entries, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task)
        grad_table_reduce_task<scalar_t, acc_t>(entries, slices, pp, task, dp);
    });
  });
}

}  // namespace metasr
