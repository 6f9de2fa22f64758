// Per-element index math and inner loops of the phase-table meta-upscale op, shared by the CPU
// (meta_upscale_cpu.cpp) and CUDA (meta_upscale_cuda.cu) kernels.
//
// Operator (see docs/native_op.md):
//   out[n, co, i, j] = sum_{k1, k2, ci} x_pad[n, ci, row_lr[i] + k1, col_lr[j] + k2]
//                                       * table[row_phase[i], col_phase[j], k1, k2, ci, co]
// with x (N, C_in, h, w), table (Pv, Ph, k, k, C_in, C_out), zero padding pad = (k - 1) / 2.
//
// Every kernel is "decode a flat task index -> compute one task with register accumulators -> write
// once". The CPU build runs exactly these functions in an at::parallel_for over the same task
// indices the CUDA grid-stride loops cover, so the CPU tests exercise the CUDA kernels' indexing.
// All indices are int64_t: the per-pixel weight tensor of a 721x1440 output with 156+ channels
// passes 2^31 elements.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MU_HD __host__ __device__ __forceinline__
#else
#define MU_HD inline
#endif

// Phase indices address the table: out-of-range values would read outside it. Host callers validate
// the index maps before the loops (meta_upscale.cpp); device code asserts (no host sync needed).
#if defined(__CUDA_ARCH__)
#define MU_ASSERT_INDEX(cond) CUDA_KERNEL_ASSERT(cond)
#else
#define MU_ASSERT_INDEX(cond) ((void)0)
#endif

namespace metasr {

// Output channels one task accumulates in registers (guarded, so no wasted multiply-adds when
// C_out is not a multiple of it).
constexpr int kCoTile = 4;

// All sizes of one call. Passed by value to kernels.
struct Shape {
  int64_t n, c_in, h, w;     // x
  int64_t out_h, out_w;      // output spatial size (H, W)
  int64_t pv, ph, k, c_out;  // table
  int64_t pad;               // (k - 1) / 2
};

MU_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
MU_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
MU_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
MU_HD int64_t co_tiles(const Shape& s) { return ceil_div(s.c_out, kCoTile); }

// Flat offsets of contiguous tensors.
MU_HD int64_t x_index(const Shape& s, int64_t n, int64_t ci, int64_t y, int64_t x) {
  return ((n * s.c_in + ci) * s.h + y) * s.w + x;
}
MU_HD int64_t out_index(const Shape& s, int64_t n, int64_t co, int64_t i, int64_t j) {
  return ((n * s.c_out + co) * s.out_h + i) * s.out_w + j;
}
// Offset of table[a, b, k1, k2, ci, 0] (the C_out values follow contiguously).
MU_HD int64_t table_index(const Shape& s, int64_t a, int64_t b, int64_t k1, int64_t k2, int64_t ci) {
  return ((((a * s.ph + b) * s.k + k1) * s.k + k2) * s.c_in + ci) * s.c_out;
}

// LR coordinate read by tap kk of an output index projecting to lr; false when it falls in the
// zero padding.
MU_HD bool tap_in_bounds(int64_t lr, int64_t kk, int64_t pad, int64_t len, int64_t* pos) {
  *pos = lr + kk - pad;
  return *pos >= 0 && *pos < len;
}

// ----------------------------------------------------------------------------------------------
// forward: one task = one output pixel (n, i, j) and one tile of kCoTile output channels.
// Task order ((tile * N + n) * H + i) * W + j: neighbouring tasks are neighbouring output columns,
// which read the same or adjacent x columns and write adjacent outputs (coalesced on the GPU).

MU_HD int64_t forward_tasks(const Shape& s) { return co_tiles(s) * s.n * s.out_h * s.out_w; }

template <typename scalar_t, typename acc_t>
MU_HD void forward_task(const Shape& s, const scalar_t* x, const scalar_t* table, const int64_t* row_lr,
                        const int64_t* row_phase, const int64_t* col_lr, const int64_t* col_phase,
                        int64_t task, scalar_t* out) {
  const int64_t j = task % s.out_w;
  int64_t t = task / s.out_w;
  const int64_t i = t % s.out_h;
  t /= s.out_h;
  const int64_t n = t % s.n;
  const int64_t co0 = (t / s.n) * kCoTile;
  const int64_t cn = min64(kCoTile, s.c_out - co0);
  const int64_t a = row_phase[i], b = col_phase[j];
  MU_ASSERT_INDEX(a >= 0 && a < s.pv && b >= 0 && b < s.ph);
  MU_ASSERT_INDEX(row_lr[i] >= 0 && row_lr[i] < s.h && col_lr[j] >= 0 && col_lr[j] < s.w);
  const int64_t hw = s.h * s.w;
  acc_t acc[kCoTile];
#pragma unroll
  for (int c = 0; c < kCoTile; ++c) acc[c] = acc_t(0);
  for (int64_t k1 = 0; k1 < s.k; ++k1) {
    int64_t y;
    if (!tap_in_bounds(row_lr[i], k1, s.pad, s.h, &y)) continue;
    for (int64_t k2 = 0; k2 < s.k; ++k2) {
      int64_t xx;
      if (!tap_in_bounds(col_lr[j], k2, s.pad, s.w, &xx)) continue;
      const scalar_t* xp = x + x_index(s, n, 0, y, xx);
      const scalar_t* wp = table + table_index(s, a, b, k1, k2, 0) + co0;
      for (int64_t ci = 0; ci < s.c_in; ++ci) {
        const acc_t xv = static_cast<acc_t>(xp[ci * hw]);
        const scalar_t* wc = wp + ci * s.c_out;
#pragma unroll
        for (int c = 0; c < kCoTile; ++c)
          if (c < cn) acc[c] += xv * static_cast<acc_t>(wc[c]);
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kCoTile; ++c)
    if (c < cn) out[out_index(s, n, co0 + c, i, j)] = static_cast<scalar_t>(acc[c]);
}

// ----------------------------------------------------------------------------------------------
// grad_x: one task = one LR element (n, ci, y, x), a gather over the output pixels whose taps read
// it (no atomics, deterministic). row_lr is non-decreasing, so the output rows projecting to LR row
// l are the contiguous range [row_start[l], row_start[l + 1]) (row_start has h + 1 entries; columns
// alike). Task order ((n * C_in + ci) * h + y) * w + x.

MU_HD int64_t grad_x_tasks(const Shape& s) { return s.n * s.c_in * s.h * s.w; }

template <typename scalar_t, typename acc_t>
MU_HD void grad_x_task(const Shape& s, const scalar_t* grad_out, const scalar_t* table, const int64_t* row_phase,
                       const int64_t* col_phase, const int64_t* row_start, const int64_t* col_start, int64_t task,
                       scalar_t* grad_x) {
  const int64_t xx = task % s.w;
  int64_t t = task / s.w;
  const int64_t y = t % s.h;
  t /= s.h;
  const int64_t ci = t % s.c_in;
  const int64_t n = t / s.c_in;
  const int64_t out_hw = s.out_h * s.out_w;
  acc_t acc = acc_t(0);
  for (int64_t k1 = 0; k1 < s.k; ++k1) {
    // output rows i with row_lr[i] + k1 - pad == y
    const int64_t l = y + s.pad - k1;
    if (l < 0 || l >= s.h) continue;
    const int64_t i0 = row_start[l], i1 = row_start[l + 1];
    for (int64_t k2 = 0; k2 < s.k; ++k2) {
      const int64_t m = xx + s.pad - k2;
      if (m < 0 || m >= s.w) continue;
      const int64_t j0 = col_start[m], j1 = col_start[m + 1];
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t a = row_phase[i];
        MU_ASSERT_INDEX(a >= 0 && a < s.pv);
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t b = col_phase[j];
          MU_ASSERT_INDEX(b >= 0 && b < s.ph);
          const scalar_t* wp = table + table_index(s, a, b, k1, k2, ci);
          const scalar_t* gp = grad_out + out_index(s, n, 0, i, j);
          for (int64_t co = 0; co < s.c_out; ++co)
            acc += static_cast<acc_t>(gp[co * out_hw]) * static_cast<acc_t>(wp[co]);
        }
      }
    }
  }
  grad_x[task] = static_cast<scalar_t>(acc);
}

// ----------------------------------------------------------------------------------------------
// grad_table, stage 1: one task = one slice s of the reduction for one table entry
// (a, b, k1, k2, ci) and a tile of output channels. The reduction of entry (a, b) runs over n and
// over the output rows of phase a times the output columns of phase b. Rows are listed phase by
// phase in row_order (a stable argsort of row_phase), phase a owning
// row_order[row_pstart[a] .. row_pstart[a + 1]) (columns alike). The N * rows(a) (n, row) pairs are
// split into `slices` contiguous slices; each task sums its slice in registers and writes its
// partial sum once. Stage 2 adds the slices in a fixed order, so the result is deterministic.
// Task order (((((s * k + k1) * k + k2) * C_in + ci) * tiles + tile) * Pv + a) * Ph + b: neighbouring
// tasks are neighbouring phase pairs, i.e. neighbouring output columns (coalesced reads).

MU_HD int64_t table_entries(const Shape& s) { return s.pv * s.ph * s.k * s.k * s.c_in * s.c_out; }
MU_HD int64_t grad_table_tasks_per_slice(const Shape& s) { return s.k * s.k * s.c_in * co_tiles(s) * s.pv * s.ph; }

// Number of slices for stage 1: enough tasks to fill the device (target_tasks), no more slices than
// (n, row) pairs per phase, and a partial buffer of at most max_slices * entries floats.
// Depends on sizes only (never on the thread count), so results are reproducible.
MU_HD int64_t grad_table_slices(const Shape& s, int64_t target_tasks, int64_t max_slices) {
  const int64_t per_slice = grad_table_tasks_per_slice(s);
  if (per_slice <= 0 || per_slice >= target_tasks) return 1;
  const int64_t pairs_per_phase = s.n * ceil_div(s.out_h, max64(s.pv, 1));
  int64_t slices = ceil_div(target_tasks, per_slice);
  slices = min64(slices, pairs_per_phase);
  slices = min64(slices, max_slices);
  return max64(slices, 1);
}

// dst: (slices, Pv, Ph, k, k, C_in, C_out) partial sums (out_t = float accumulator type), or the
// (Pv, Ph, k, k, C_in, C_out) gradient itself when slices == 1 (out_t = scalar_t).
template <typename scalar_t, typename acc_t, typename out_t>
MU_HD void grad_table_task(const Shape& s, const scalar_t* grad_out, const scalar_t* x, const int64_t* row_lr,
                           const int64_t* col_lr, const int64_t* row_order, const int64_t* row_pstart,
                           const int64_t* col_order, const int64_t* col_pstart, int64_t slices, int64_t task,
                           out_t* dst) {
  const int64_t b = task % s.ph;
  int64_t t = task / s.ph;
  const int64_t a = t % s.pv;
  t /= s.pv;
  const int64_t tiles = co_tiles(s);
  const int64_t co0 = (t % tiles) * kCoTile;
  t /= tiles;
  const int64_t ci = t % s.c_in;
  t /= s.c_in;
  const int64_t k2 = t % s.k;
  t /= s.k;
  const int64_t k1 = t % s.k;
  const int64_t slice = t / s.k;
  const int64_t cn = min64(kCoTile, s.c_out - co0);

  const int64_t r_first = row_pstart[a], rows_a = row_pstart[a + 1] - r_first;
  const int64_t c_first = col_pstart[b], cols_b = col_pstart[b + 1] - c_first;
  const int64_t pairs = s.n * rows_a;  // (n, row of phase a)
  const int64_t p0 = slice * pairs / slices, p1 = (slice + 1) * pairs / slices;
  const int64_t out_hw = s.out_h * s.out_w;
  acc_t acc[kCoTile];
#pragma unroll
  for (int c = 0; c < kCoTile; ++c) acc[c] = acc_t(0);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / rows_a;
    const int64_t i = row_order[r_first + p % rows_a];
    int64_t y;
    if (!tap_in_bounds(row_lr[i], k1, s.pad, s.h, &y)) continue;
    for (int64_t q = 0; q < cols_b; ++q) {
      const int64_t j = col_order[c_first + q];
      int64_t xx;
      if (!tap_in_bounds(col_lr[j], k2, s.pad, s.w, &xx)) continue;
      const acc_t xv = static_cast<acc_t>(x[x_index(s, n, ci, y, xx)]);
      const scalar_t* gp = grad_out + out_index(s, n, co0, i, j);
#pragma unroll
      for (int c = 0; c < kCoTile; ++c)
        if (c < cn) acc[c] += xv * static_cast<acc_t>(gp[c * out_hw]);
    }
  }
  out_t* dp = dst + slice * table_entries(s) + table_index(s, a, b, k1, k2, ci) + co0;
#pragma unroll
  for (int c = 0; c < kCoTile; ++c)
    if (c < cn) dp[c] = static_cast<out_t>(acc[c]);
}

// grad_table, stage 2: one task = one table entry, the slices summed in order 0, 1, ...
template <typename scalar_t, typename acc_t>
MU_HD void grad_table_reduce_task(int64_t entries, int64_t slices, const acc_t* partial, int64_t task,
                                  scalar_t* grad_table) {
  acc_t acc = acc_t(0);
  for (int64_t sl = 0; sl < slices; ++sl) acc += partial[sl * entries + task];
  grad_table[task] = static_cast<scalar_t>(acc);
}

}  // namespace metasr
