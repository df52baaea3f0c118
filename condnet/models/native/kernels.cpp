// CondConv's depthwise convolution with one kernel per example, on channels_last float32 maps.
//
// x: (batch, channels, height, width) stored channels_last, i.e. (batch, height, width,
// channels) in memory; kernels: (batch, k, k, channels), contiguous. Every inner loop runs
// over the channels, which are contiguous in both, so the compiler vectorises it. The
// reference (a grouped convolution with the batch folded into the groups) is in
// condconv.py; the tests hold the two equal, forward and backward.
#include <ATen/Parallel.h>
#include <torch/all.h>
#include <torch/library.h>

#include <algorithm>

namespace {

struct Geometry {
  int64_t batch, channels, height, width, k, stride, pad, out_h, out_w;
};

Geometry geometry(const torch::Tensor& x, const torch::Tensor& kernels, int64_t stride,
                  int64_t pad) {
  TORCH_CHECK(x.dim() == 4 && kernels.dim() == 4, "depthwise: 4-D input and kernels expected");
  TORCH_CHECK(x.scalar_type() == torch::kFloat && kernels.scalar_type() == torch::kFloat,
              "depthwise: float32 expected");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "depthwise: channels_last input expected");
  TORCH_CHECK(kernels.is_contiguous(), "depthwise: contiguous (batch, k, k, channels) kernels expected");
  Geometry g{x.size(0), x.size(1), x.size(2), x.size(3), kernels.size(1), stride, pad, 0, 0};
  TORCH_CHECK(kernels.size(0) == g.batch && kernels.size(2) == g.k && kernels.size(3) == g.channels,
              "depthwise: kernels must be (batch, k, k, channels)");
  g.out_h = (g.height + 2 * pad - g.k) / stride + 1;
  g.out_w = (g.width + 2 * pad - g.k) / stride + 1;
  return g;
}

torch::Tensor channels_last_empty(const torch::Tensor& like, int64_t b, int64_t c, int64_t h,
                                  int64_t w) {
  return torch::empty({b, c, h, w}, like.options().memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

// Channels are processed in blocks of `kBlock`, accumulated in vector registers over the taps
// (GCC vector extensions: AVX2 code where the loader passes -mavx2, plain code elsewhere).
typedef float Vec __attribute__((vector_size(32)));
typedef float UnalignedVec __attribute__((vector_size(32), aligned(4), may_alias));
constexpr int64_t kLanes = 8;
constexpr int64_t kVectors = 4;
constexpr int64_t kBlock = kLanes * kVectors;
constexpr int64_t kMaxTaps = 225;  // kernels up to 15 x 15

inline Vec load(const float* p) { return *reinterpret_cast<const UnalignedVec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<UnalignedVec*>(p) = v; }

// o[c] = (bias[c] or 0) + sum over taps t of a[t][c] * b[t][c], for c in [offset, +kBlock).
// `Taps` > 0 fixes the tap count at compile time (a 3x3 kernel inside the map: unrolled);
// 0 takes `taps`.
template <int64_t Taps>
inline void sum_of_products_block(float* o, const float* const* a, const float* const* b,
                                  int64_t taps, const float* bias, int64_t offset) {
  const int64_t count = Taps > 0 ? Taps : taps;
  Vec acc[kVectors];
#pragma GCC unroll 4
  for (int64_t v = 0; v < kVectors; ++v) acc[v] = bias ? load(bias + offset + v * kLanes) : Vec{};
#pragma GCC unroll 9
  for (int64_t t = 0; t < count; ++t) {
#pragma GCC unroll 4
    for (int64_t v = 0; v < kVectors; ++v)
      acc[v] += load(a[t] + offset + v * kLanes) * load(b[t] + offset + v * kLanes);
  }
#pragma GCC unroll 4
  for (int64_t v = 0; v < kVectors; ++v) store(o + offset + v * kLanes, acc[v]);
}

inline void sum_of_products_tail(float* o, const float* const* a, const float* const* b,
                                 int64_t taps, const float* bias, int64_t from, int64_t to) {
  for (int64_t c = from; c < to; ++c) {
    float acc = bias ? bias[c] : 0.f;
    for (int64_t t = 0; t < taps; ++t) acc += a[t][c] * b[t][c];
    o[c] = acc;
  }
}

inline void sum_of_products_all(float* o, const float* const* a, const float* const* b,
                                int64_t taps, const float* bias, int64_t channels) {
  int64_t c = 0;
  if (taps == 9) {
    for (; c + kBlock <= channels; c += kBlock) sum_of_products_block<9>(o, a, b, taps, bias, c);
  }
  for (; c + kBlock <= channels; c += kBlock) sum_of_products_block<0>(o, a, b, taps, bias, c);
  sum_of_products_tail(o, a, b, taps, bias, c, channels);
}

torch::Tensor forward(torch::Tensor x, torch::Tensor kernels, c10::optional<torch::Tensor> bias,
                      int64_t stride, int64_t pad) {
  const Geometry g = geometry(x, kernels, stride, pad);
  TORCH_CHECK(g.k * g.k <= kMaxTaps, "depthwise: kernels up to 15 x 15");
  auto out = channels_last_empty(x, g.batch, g.channels, g.out_h, g.out_w);
  torch::Tensor bias_c = bias.has_value() ? bias->contiguous() : torch::Tensor();
  const float* xs = x.data_ptr<float>();
  const float* ks = kernels.data_ptr<float>();
  const float* bs = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  float* os = out.data_ptr<float>();
  const int64_t C = g.channels;
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    const float* a[kMaxTaps];
    const float* b_[kMaxTaps];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.out_h, oh = row % g.out_h;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        int64_t taps = 0;
        for (int64_t i = 0; i < g.k; ++i) {
          const int64_t ih = oh * g.stride - g.pad + i;
          if (ih < 0 || ih >= g.height) continue;
          for (int64_t j = 0; j < g.k; ++j) {
            const int64_t iw = ow * g.stride - g.pad + j;
            if (iw < 0 || iw >= g.width) continue;
            a[taps] = xs + ((b * g.height + ih) * g.width + iw) * C;
            b_[taps++] = ks + ((b * g.k + i) * g.k + j) * C;
          }
        }
        sum_of_products_all(os + (row * g.out_w + ow) * C, a, b_, taps, bs, C);
      }
    }
  });
  return out;
}

// The gradient for the input: each input pixel gathers the output pixels it reached.
torch::Tensor backward_input(torch::Tensor grad, torch::Tensor kernels, int64_t height,
                             int64_t width, int64_t stride, int64_t pad) {
  grad = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = grad.size(0), C = grad.size(1), out_h = grad.size(2), out_w = grad.size(3);
  const int64_t k = kernels.size(1);
  auto gx = channels_last_empty(grad, batch, C, height, width);
  const float* gs = grad.data_ptr<float>();
  const float* ks = kernels.data_ptr<float>();
  float* xs = gx.data_ptr<float>();
  at::parallel_for(0, batch * height, 1, [&](int64_t begin, int64_t end) {
    const float* a[kMaxTaps];
    const float* b_[kMaxTaps];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / height, ih = row % height;
      for (int64_t iw = 0; iw < width; ++iw) {
        int64_t taps = 0;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t top = ih + pad - i;
          if (top < 0 || top % stride || top / stride >= out_h) continue;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t left = iw + pad - j;
            if (left < 0 || left % stride || left / stride >= out_w) continue;
            a[taps] = gs + ((b * out_h + top / stride) * out_w + left / stride) * C;
            b_[taps++] = ks + ((b * k + i) * k + j) * C;
          }
        }
        sum_of_products_all(xs + (row * width + iw) * C, a, b_, taps, nullptr, C);
      }
    }
  });
  return gx;
}

// acc[c] += g[c] * x[c] for c in [0, channels).
inline void multiply_add(float* acc, const float* g, const float* x, int64_t channels) {
  int64_t c = 0;
  for (; c + kBlock <= channels; c += kBlock) {
#pragma GCC unroll 4
    for (int64_t v = 0; v < kVectors; ++v) {
      const int64_t at = c + v * kLanes;
      store(acc + at, load(acc + at) + load(g + at) * load(x + at));
    }
  }
  for (; c < channels; ++c) acc[c] += g[c] * x[c];
}

// The gradient for the kernels: per example, output gradient times the input under each tap,
// summed over the output pixels (one pass over both; the example's sums stay in cache).
torch::Tensor backward_kernels(torch::Tensor grad, torch::Tensor x, int64_t k, int64_t stride,
                               int64_t pad) {
  grad = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), C = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_h = grad.size(2), out_w = grad.size(3);
  auto gk = torch::zeros({batch, k, k, C}, x.options());
  const float* gs = grad.data_ptr<float>();
  const float* xs = x.data_ptr<float>();
  float* ks = gk.data_ptr<float>();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t oh = 0; oh < out_h; ++oh) {
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const float* g = gs + ((b * out_h + oh) * out_w + ow) * C;
          for (int64_t i = 0; i < k; ++i) {
            const int64_t ih = oh * stride - pad + i;
            if (ih < 0 || ih >= height) continue;
            for (int64_t j = 0; j < k; ++j) {
              const int64_t iw = ow * stride - pad + j;
              if (iw < 0 || iw >= width) continue;
              multiply_add(ks + ((b * k + i) * k + j) * C, g,
                           xs + ((b * height + ih) * width + iw) * C, C);
            }
          }
        }
      }
    }
  });
  return gk;
}

// The operators, torch.ops.condnet.*; condnet/models/native/__init__.py registers their
// autograd formula and their fake (shape-only) implementations.
TORCH_LIBRARY(condnet, m) {
  m.def("depthwise(Tensor x, Tensor kernels, Tensor? bias, int stride, int pad) -> Tensor");
  m.def("depthwise_backward_input(Tensor grad, Tensor kernels, int height, int width, "
        "int stride, int pad) -> Tensor");
  m.def("depthwise_backward_kernels(Tensor grad, Tensor x, int k, int stride, int pad) -> Tensor");
}

TORCH_LIBRARY_IMPL(condnet, CPU, m) {
  m.impl("depthwise", &forward);
  m.impl("depthwise_backward_input", &backward_input);
  m.impl("depthwise_backward_kernels", &backward_kernels);
}
