// A fused CPU kernel for sketch-rnn's LSTM: the whole time loop (forward) and its gradient
// (backward) each run as one TensorFlow op, so a training step pays no per-time-step op dispatch.
//
// The cell is model/rnn.py's plain LSTM (gate order i, f, g, o), with the reference's recurrent
// dropout on the cell candidate:
//   z_t = [h_{t-1}, x_t] [W; W_x] + r_b,   c_t = f * c_{t-1} + i * (g * mask_t),   h_t = o * tanh(c_t)
// (mask_t drawn inside the op from a seed, see Dropout),
// where x_t are the per-step inputs (stroke-5 rows: D is small) and r_b a per-row bias: the bias
// plus the projection of inputs that are the same at every step (the decoder's z), so that no
// [T, B, 4H] input projection is ever materialised. One GEMM per step covers h and x.
//
// Per-row lengths: row b runs lengths[b] steps; after that its state is frozen (outputs repeat the
// last h), exactly as model.rnn.scan with `lengths`. Rows are independent, so the batch is sorted
// by length and dealt round-robin to the intra-op threads: each thread runs the whole time loop
// over its rows (one GEMM of its still-running rows per step, no synchronisation between steps),
// and a row that has ended costs nothing but a copy. The weight gradient sum_t h_{t-1}^T dz_t is
// accumulated in chunks of many steps (one large GEMM per chunk instead of one per step).
//
// Built at first use by trainer/kernels/__init__.py with the host compiler for this CPU.

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#define EIGEN_USE_THREADS
#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/platform/blocking_counter.h"
#include "tensorflow/core/platform/threadpool.h"

namespace sketch_rnn {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MapMat = Eigen::Map<RowMat>;
using CMapMat = Eigen::Map<const RowMat>;
using MapArr = Eigen::Map<Eigen::ArrayXf>;
using CMapArr = Eigen::Map<const Eigen::ArrayXf>;

REGISTER_OP("SketchLstmForward")
    .Input("x: float")             // [T, B, D] per-step inputs
    .Input("h0: float")            // [B, H]
    .Input("c0: float")            // [B, H]
    .Input("kernel: float")        // [H, 4H] recurrent kernel
    .Input("input_kernel: float")  // [D, 4H]
    .Input("row_bias: float")      // [B, 4H]
    .Input("keep_prob: float")     // recurrent dropout on g: kept with this probability (>= 1: none)
    .Input("seed: int32")          // [2] seed of the dropout masks (see Dropout)
    .Input("lengths: int32")       // [B] steps per row (clipped to [0, T])
    .Output("hs: float")           // [T, B, H]
    .Output("cs: float")           // [T, B, H]
    .Output("acts: float")         // [T, B, 4H] sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
    .Output("h_last: float")       // [B, H]
    .Output("c_last: float")       // [B, H]
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, h0, k;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &h0));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &k));
      DimensionHandle t = c->Dim(x, 0), b = c->Dim(x, 1), h = c->Dim(h0, 1), g = c->Dim(k, 1);
      c->set_output(0, c->MakeShape({t, b, h}));
      c->set_output(1, c->MakeShape({t, b, h}));
      c->set_output(2, c->MakeShape({t, b, g}));
      c->set_output(3, c->MakeShape({b, h}));
      c->set_output(4, c->MakeShape({b, h}));
      return absl::OkStatus();
    });

REGISTER_OP("SketchLstmBackward")
    .Input("x: float")             // [T, B, D]
    .Input("kernel: float")        // [H, 4H]
    .Input("input_kernel: float")  // [D, 4H]
    .Input("h0: float")            // [B, H]
    .Input("c0: float")            // [B, H]
    .Input("hs: float")            // [T, B, H]   from the forward op
    .Input("cs: float")            // [T, B, H]
    .Input("acts: float")          // [T, B, 4H]
    .Input("keep_prob: float")     // as the forward op: the same masks are drawn again
    .Input("seed: int32")          // [2]
    .Input("lengths: int32")       // [B]
    .Input("d_hs: float")          // [T, B, H]
    .Input("d_h_last: float")      // [B, H]
    .Input("d_c_last: float")      // [B, H]
    .Output("d_x: float")          // [T, B, D]
    .Output("d_h0: float")         // [B, H]
    .Output("d_c0: float")         // [B, H]
    .Output("d_kernel: float")     // [H, 4H]
    .Output("d_input_kernel: float")  // [D, 4H]
    .Output("d_row_bias: float")   // [B, 4H]
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle x, h0, k;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &x));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &h0));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &k));
      c->set_output(0, x);
      c->set_output(1, c->input(3));
      c->set_output(2, c->input(4));
      c->set_output(3, c->input(1));
      c->set_output(4, c->input(2));
      c->set_output(5, c->MakeShape({c->Dim(x, 1), c->Dim(k, 1)}));
      return absl::OkStatus();
    });

REGISTER_OP("SketchDropoutMask")  // The masks the LSTM ops draw, [T, B, H] (for tests).
    .Input("keep_prob: float")
    .Input("seed: int32")
    .Input("shape: int32")  // [3]: T, B, H
    .Output("mask: float")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->MakeShapeFromShapeTensor(2, &out));
      c->set_output(0, out);
      return absl::OkStatus();
    });

namespace {

// A 32-bit integer hash with good avalanche (Wellons' "lowbias32").
inline uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The recurrent dropout mask of step t, row b: m[j] = 1 / keep with probability keep, else 0,
// from a counter-based hash of (seed, t, b, j), so the backward op draws the same masks without
// storing them, and no [T, B, H] mask tensor is ever made. 24-bit uniforms.
struct Dropout {
  bool on = false;
  uint32_t s0 = 0, s1 = 0, threshold = 0;
  float scale = 1.0f;

  Dropout(float keep, const int32_t* seed) {
    on = keep < 1.0f;
    if (!on) return;
    s0 = static_cast<uint32_t>(seed[0]);
    s1 = static_cast<uint32_t>(seed[1]);
    threshold = static_cast<uint32_t>(std::max(0.0f, keep) * 16777216.0f);
    scale = keep > 0.0f ? 1.0f / keep : 0.0f;
  }

  void Fill(int t, int b, int n, float* m) const {
    const uint32_t row = Mix(s0 ^ Mix(static_cast<uint32_t>(t) * 0x9E3779B9U + Mix(s1 + static_cast<uint32_t>(b))));
    for (int j = 0; j < n; ++j) {
      m[j] = (Mix(row + static_cast<uint32_t>(j) * 0x9E3779B9U) >> 8) < threshold ? scale : 0.0f;
    }
  }
};

// Rows sorted by length (longest first), dealt round-robin to `parts` threads.
struct Partition {
  std::vector<std::vector<int>> rows;  // rows[k]: batch rows of part k, longest first
  std::vector<std::vector<int>> lens;  // their lengths
};

Partition MakePartition(const int32_t* lengths, int batch, int steps, int parts) {
  std::vector<int> order(batch);
  std::iota(order.begin(), order.end(), 0);
  auto len = [&](int b) { return std::min(std::max(lengths[b], 0), steps); };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return len(a) > len(b); });
  Partition p;
  p.rows.resize(parts);
  p.lens.resize(parts);
  for (int i = 0; i < batch; ++i) {
    p.rows[i % parts].push_back(order[i]);
    p.lens[i % parts].push_back(len(order[i]));
  }
  return p;
}

// Runs fn(k) for k in [0, parts) on the op's intra-op threads and waits for them. Every part goes
// to the pool (the calling inter-op thread only waits), so that two of these ops running at once
// (the encoder's two directions) share the pool's threads instead of running one thread more
// than there are cores each.
template <typename Fn>
void RunParts(OpKernelContext* ctx, int parts, Fn fn) {
  if (parts == 1) {
    fn(0);
    return;
  }
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  tensorflow::BlockingCounter counter(parts);
  for (int k = 0; k < parts; ++k) {
    pool->Schedule([&, k]() {
      fn(k);
      counter.DecrementCount();
    });
  }
  counter.Wait();
}

int NumParts(OpKernelContext* ctx, int batch) {
  const int threads = ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
  return std::max(1, std::min(threads, batch));
}

// [W; W_x]: [H + D, 4H], the weights of one GEMM over [h, x].
RowMat StackWeights(const Tensor& w, const Tensor& wx) {
  const int H = w.dim_size(0), D = wx.dim_size(0), G = w.dim_size(1);
  RowMat stacked(H + D, G);
  stacked.topRows(H) = CMapMat(w.flat<float>().data(), H, G);
  if (D > 0) stacked.bottomRows(D) = CMapMat(wx.flat<float>().data(), D, G);
  return stacked;
}

// The inputs both LSTM ops take: x [T, B, D], kernel [H, 4H], input_kernel [D, 4H], h0 and c0
// [B, H], keep_prob a scalar, seed [2], lengths [B].
absl::Status CheckLstmInputs(const Tensor& x, const Tensor& w, const Tensor& wx, const Tensor& h0,
                             const Tensor& c0, const Tensor& keep, const Tensor& seed,
                             const Tensor& len) {
  if (x.dims() != 3) return InvalidArgument("x must be [T, B, D]");
  if (w.dims() != 2 || w.dim_size(1) != 4 * w.dim_size(0)) {
    return InvalidArgument("kernel must be [H, 4H]");
  }
  const int64_t B = x.dim_size(1), D = x.dim_size(2), H = w.dim_size(0);
  if (!(h0.shape() == TensorShape({B, H})) || !(c0.shape() == TensorShape({B, H}))) {
    return InvalidArgument("h0 and c0 must be [B, H]");
  }
  if (!(wx.shape() == TensorShape({D, 4 * H}))) return InvalidArgument("input_kernel must be [D, 4H]");
  if (keep.NumElements() != 1 || seed.NumElements() != 2) {
    return InvalidArgument("keep_prob must be a scalar and seed [2]");
  }
  if (!(len.shape() == TensorShape({B}))) return InvalidArgument("lengths must be [B]");
  return absl::OkStatus();
}

}  // namespace

class SketchLstmForwardOp : public OpKernel {
 public:
  explicit SketchLstmForwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    const Tensor& h0_t = ctx->input(1);
    const Tensor& c0_t = ctx->input(2);
    const Tensor& w_t = ctx->input(3);
    const Tensor& wx_t = ctx->input(4);
    const Tensor& rb_t = ctx->input(5);
    const Tensor& keep_t = ctx->input(6);
    const Tensor& seed_t = ctx->input(7);
    const Tensor& len_t = ctx->input(8);
    OP_REQUIRES_OK(ctx, CheckLstmInputs(x_t, w_t, wx_t, h0_t, c0_t, keep_t, seed_t, len_t));
    const int T = x_t.dim_size(0), B = x_t.dim_size(1), D = x_t.dim_size(2);
    const int H = w_t.dim_size(0), G = 4 * H, HD = H + D;
    OP_REQUIRES(ctx, rb_t.shape() == TensorShape({B, G}), InvalidArgument("row_bias must be [B, 4H]"));
    const Dropout dropout(keep_t.flat<float>()(0), seed_t.flat<int32_t>().data());

    Tensor *hs_t, *cs_t, *acts_t, *hl_t, *cl_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, B, H}), &hs_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({T, B, H}), &cs_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({T, B, G}), &acts_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({B, H}), &hl_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({B, H}), &cl_t));
    if (B == 0) return;

    const float* x = x_t.flat<float>().data();
    const float* h0 = h0_t.flat<float>().data();
    const float* c0 = c0_t.flat<float>().data();
    const float* rb = rb_t.flat<float>().data();
    float* hs = hs_t->flat<float>().data();
    float* cs = cs_t->flat<float>().data();
    float* acts = acts_t->flat<float>().data();
    float* hl = hl_t->flat<float>().data();
    float* cl = cl_t->flat<float>().data();
    const int parts = NumParts(ctx, B);
    const Partition p = MakePartition(len_t.flat<int32_t>().data(), B, T, parts);
    const RowMat WX = StackWeights(w_t, wx_t);

    RunParts(ctx, parts, [&](int k) {
      const std::vector<int>& rows = p.rows[k];
      const std::vector<int>& lens = p.lens[k];
      const int n = rows.size();
      // hx[r] = [h, x_t] of row r (h updated in place); c[r]; z = hx WX.
      std::vector<float> hx(static_cast<size_t>(n) * HD), c(static_cast<size_t>(n) * H);
      std::vector<float> z(static_cast<size_t>(n) * G), mask(H);
      for (int r = 0; r < n; ++r) {
        std::memcpy(&hx[r * HD], h0 + static_cast<int64_t>(rows[r]) * H, H * sizeof(float));
        std::memcpy(&c[r * H], c0 + static_cast<int64_t>(rows[r]) * H, H * sizeof(float));
      }
      int a = n;
      for (int t = 0; t < T; ++t) {
        while (a > 0 && lens[a - 1] <= t) --a;  // Rows [0, a) still run (lens descending).
        for (int r = 0; r < a; ++r) {
          const int64_t tb = static_cast<int64_t>(t) * B + rows[r];
          std::memcpy(&hx[r * HD + H], x + tb * D, D * sizeof(float));
        }
        if (a > 0) MapMat(z.data(), a, G).noalias() = CMapMat(hx.data(), a, HD) * WX;
        for (int r = 0; r < n; ++r) {
          const int b = rows[r];
          const int64_t tb = static_cast<int64_t>(t) * B + b;
          float* hr = &hx[r * HD];
          float* cr = &c[r * H];
          if (r < a) {
            MapArr act(acts + tb * G, G);
            act = MapArr(&z[r * G], G) + CMapArr(rb + static_cast<int64_t>(b) * G, G);
            auto i = act.segment(0, H), f = act.segment(H, H), g = act.segment(2 * H, H),
                 o = act.segment(3 * H, H);
            i = i.logistic();
            f = f.logistic();
            g = g.tanh();
            o = o.logistic();
            MapArr cv(cr, H), hv(hr, H);
            if (dropout.on) {
              dropout.Fill(t, b, H, mask.data());
              cv = f * cv + i * g * CMapArr(mask.data(), H);
            } else {
              cv = f * cv + i * g;
            }
            hv = o * cv.tanh();
          }
          std::memcpy(hs + tb * H, hr, H * sizeof(float));
          std::memcpy(cs + tb * H, cr, H * sizeof(float));
        }
      }
      for (int r = 0; r < n; ++r) {
        std::memcpy(hl + static_cast<int64_t>(rows[r]) * H, &hx[r * HD], H * sizeof(float));
        std::memcpy(cl + static_cast<int64_t>(rows[r]) * H, &c[r * H], H * sizeof(float));
      }
    });
  }
};

class SketchLstmBackwardOp : public OpKernel {
 public:
  explicit SketchLstmBackwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x_t = ctx->input(0);
    const Tensor& w_t = ctx->input(1);
    const Tensor& wx_t = ctx->input(2);
    const Tensor& h0_t = ctx->input(3);
    const Tensor& c0_t = ctx->input(4);
    const Tensor& hs_t = ctx->input(5);
    const Tensor& cs_t = ctx->input(6);
    const Tensor& acts_t = ctx->input(7);
    const Tensor& keep_t = ctx->input(8);
    const Tensor& seed_t = ctx->input(9);
    const Tensor& len_t = ctx->input(10);
    const Tensor& dhs_t = ctx->input(11);
    const Tensor& dhl_t = ctx->input(12);
    const Tensor& dcl_t = ctx->input(13);
    OP_REQUIRES_OK(ctx, CheckLstmInputs(x_t, w_t, wx_t, h0_t, c0_t, keep_t, seed_t, len_t));
    const int T = x_t.dim_size(0), B = x_t.dim_size(1), D = x_t.dim_size(2);
    const int H = w_t.dim_size(0), G = 4 * H, HD = H + D;
    const TensorShape tbh({T, B, H}), bh({B, H});
    OP_REQUIRES(ctx, dhl_t.shape() == bh && dcl_t.shape() == bh,
                InvalidArgument("d_h_last and d_c_last must be [B, H]"));
    OP_REQUIRES(ctx, hs_t.shape() == tbh && cs_t.shape() == tbh && dhs_t.shape() == tbh,
                InvalidArgument("hs, cs, d_hs must be [T, B, H]"));
    OP_REQUIRES(ctx, acts_t.shape() == TensorShape({T, B, G}), InvalidArgument("acts must be [T, B, 4H]"));
    const Dropout dropout(keep_t.flat<float>()(0), seed_t.flat<int32_t>().data());

    Tensor *dx_t, *dh0_t, *dc0_t, *dw_t, *dwx_t, *drb_t;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({T, B, D}), &dx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, bh, &dh0_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, bh, &dc0_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({H, G}), &dw_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({D, G}), &dwx_t));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, TensorShape({B, G}), &drb_t));
    MapMat dW(dw_t->flat<float>().data(), H, G);
    MapMat dWx(dwx_t->flat<float>().data(), D, G);
    dW.setZero();
    dWx.setZero();
    if (B == 0) return;

    const float* x = x_t.flat<float>().data();
    const float* h0 = h0_t.flat<float>().data();
    const float* c0 = c0_t.flat<float>().data();
    const float* hs = hs_t.flat<float>().data();
    const float* cs = cs_t.flat<float>().data();
    const float* acts = acts_t.flat<float>().data();
    const float* dhs = dhs_t.flat<float>().data();
    const float* dhl = dhl_t.flat<float>().data();
    const float* dcl = dcl_t.flat<float>().data();
    float* dx = dx_t->flat<float>().data();
    float* dh0 = dh0_t->flat<float>().data();
    float* dc0 = dc0_t->flat<float>().data();
    float* drb = drb_t->flat<float>().data();
    const int parts = NumParts(ctx, B);
    const Partition p = MakePartition(len_t.flat<int32_t>().data(), B, T, parts);
    const RowMat WX = StackWeights(w_t, wx_t);
    std::vector<RowMat> dWX_parts(parts);

    RunParts(ctx, parts, [&](int k) {
      const std::vector<int>& rows = p.rows[k];
      const std::vector<int>& lens = p.lens[k];
      const int n = rows.size();
      RowMat& dWXk = dWX_parts[k];
      dWXk.setZero(HD, G);
      // Chunk of ([h_{t-1}, x_t], dz_t) rows over several steps: one large GEMM for [dW; dW_x].
      const int chunk = std::max(n, 1024);
      std::vector<float> hp(static_cast<size_t>(chunk) * HD), dz(static_cast<size_t>(chunk) * G);
      int filled = 0;
      auto flush = [&]() {
        if (filled == 0) return;
        dWXk.noalias() += CMapMat(hp.data(), filled, HD).transpose() * CMapMat(dz.data(), filled, G);
        filled = 0;
      };
      // dhx[r] = [dh, dx] of row r: dh is the gradient reaching h_t from later steps.
      std::vector<float> dhx(static_cast<size_t>(n) * HD), dc(static_cast<size_t>(n) * H);
      std::vector<float> dbias(static_cast<size_t>(n) * G, 0.0f);
      Eigen::ArrayXf tc(H);
      std::vector<float> mask(H);
      for (int r = 0; r < n; ++r) {
        std::memcpy(&dhx[r * HD], dhl + static_cast<int64_t>(rows[r]) * H, H * sizeof(float));
        std::memcpy(&dc[r * H], dcl + static_cast<int64_t>(rows[r]) * H, H * sizeof(float));
      }
      int a = 0;
      for (int t = T - 1; t >= 0; --t) {
        while (a < n && lens[a] > t) ++a;  // Rows [0, a) ran step t.
        if (filled + a > chunk) flush();
        float* dzt = &dz[static_cast<size_t>(filled) * G];
        for (int r = 0; r < n; ++r) {
          const int b = rows[r];
          const int64_t tb = static_cast<int64_t>(t) * B + b;
          MapArr dhv(&dhx[r * HD], H);
          dhv += CMapArr(dhs + tb * H, H);
          if (r >= a) {  // Ended: h_t = h_{t-1}, c_t = c_{t-1}; x_t is not read.
            if (D > 0) std::memset(dx + tb * D, 0, D * sizeof(float));
            continue;
          }
          CMapArr act(acts + tb * G, G);
          auto i = act.segment(0, H), f = act.segment(H, H), g = act.segment(2 * H, H),
               o = act.segment(3 * H, H);
          CMapArr ct(cs + tb * H, H);
          CMapArr cp(t > 0 ? cs + (tb - B) * H : c0 + static_cast<int64_t>(b) * H, H);
          const float* hprev = t > 0 ? hs + (tb - B) * H : h0 + static_cast<int64_t>(b) * H;
          MapArr dcv(&dc[r * H], H);
          tc = ct.tanh();
          dcv += dhv * o * (1.0f - tc.square());
          MapArr d(dzt + static_cast<size_t>(r) * G, G);
          if (dropout.on) {
            dropout.Fill(t, b, H, mask.data());
            CMapArr m(mask.data(), H);
            d.segment(0, H) = dcv * g * m * i * (1.0f - i);
            d.segment(2 * H, H) = dcv * i * m * (1.0f - g.square());
          } else {
            d.segment(0, H) = dcv * g * i * (1.0f - i);
            d.segment(2 * H, H) = dcv * i * (1.0f - g.square());
          }
          d.segment(H, H) = dcv * cp * f * (1.0f - f);
          d.segment(3 * H, H) = dhv * tc * o * (1.0f - o);
          dcv *= f;
          MapArr(&dbias[static_cast<size_t>(r) * G], G) += d;
          float* row = &hp[static_cast<size_t>(filled + r) * HD];
          std::memcpy(row, hprev, H * sizeof(float));
          std::memcpy(row + H, x + tb * D, D * sizeof(float));
        }
        if (a > 0) {
          // [dh_{t-1}, dx_t] = dz_t [W; W_x]^T for the running rows (ended rows carry dh over).
          MapMat(dhx.data(), a, HD).noalias() = CMapMat(dzt, a, G) * WX.transpose();
          for (int r = 0; r < a; ++r) {
            const int64_t tb = static_cast<int64_t>(t) * B + rows[r];
            std::memcpy(dx + tb * D, &dhx[r * HD + H], D * sizeof(float));
          }
          filled += a;
        }
      }
      flush();
      for (int r = 0; r < n; ++r) {
        const int64_t b = rows[r];
        std::memcpy(dh0 + b * H, &dhx[r * HD], H * sizeof(float));
        std::memcpy(dc0 + b * H, &dc[r * H], H * sizeof(float));
        std::memcpy(drb + b * G, &dbias[static_cast<size_t>(r) * G], G * sizeof(float));
      }
    });
    for (int k = 0; k < parts; ++k) {
      dW += dWX_parts[k].topRows(H);
      if (D > 0) dWx += dWX_parts[k].bottomRows(D);
    }
  }
};

class SketchDropoutMaskOp : public OpKernel {
 public:
  explicit SketchDropoutMaskOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keep_t = ctx->input(0);
    const Tensor& seed_t = ctx->input(1);
    const Tensor& shape_t = ctx->input(2);
    OP_REQUIRES(ctx, keep_t.NumElements() == 1 && seed_t.NumElements() == 2 && shape_t.NumElements() == 3,
                InvalidArgument("keep_prob must be a scalar, seed [2] and shape [3]"));
    const auto shape = shape_t.flat<int32_t>();
    OP_REQUIRES(ctx, shape(0) >= 0 && shape(1) >= 0 && shape(2) >= 0, InvalidArgument("negative shape"));
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({shape(0), shape(1), shape(2)}), &out));
    const Dropout dropout(keep_t.flat<float>()(0), seed_t.flat<int32_t>().data());
    float* m = out->flat<float>().data();
    for (int t = 0; t < shape(0); ++t) {
      for (int b = 0; b < shape(1); ++b) {
        float* row = m + (static_cast<int64_t>(t) * shape(1) + b) * shape(2);
        if (dropout.on) {
          dropout.Fill(t, b, shape(2), row);
        } else {
          std::fill(row, row + shape(2), 1.0f);
        }
      }
    }
  }
};

REGISTER_KERNEL_BUILDER(Name("SketchDropoutMask").Device(DEVICE_CPU), SketchDropoutMaskOp);
REGISTER_KERNEL_BUILDER(Name("SketchLstmForward").Device(DEVICE_CPU), SketchLstmForwardOp);
REGISTER_KERNEL_BUILDER(Name("SketchLstmBackward").Device(DEVICE_CPU), SketchLstmBackwardOp);

}  // namespace sketch_rnn
