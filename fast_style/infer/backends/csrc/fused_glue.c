/* Fused "glue" kernels of the transform network for the CPU backend `fused`
 * (fast_style/infer/backends/fused.py): everything between two convolutions in one pass each.
 *
 * Layout: float32 NHWC (PyTorch channels_last). The convolutions themselves stay in PyTorch
 * (oneDNN); these kernels replace the instance norm + ReLU + residual add + reflection pad
 * (and the sub-pixel interleave and the output sum + tanh) that ONNX Runtime and eager PyTorch
 * run as 4-8 separate, partly single-threaded passes. Built at first use with the system C
 * compiler (-O3 -march=native -fopenmp, linked against PyTorch's own OpenMP runtime) and
 * cached; no Python headers are needed.
 *
 * Contract: fused.py checks every tensor's dtype, layout, sizes and the pads against them
 * before calling; the checks here are the last line (arguments that would read or write out of
 * bounds, failed allocations) and return an FS_E* code instead of crashing. Every entry point
 * returns FS_OK (0) or an error code; fs_abi_version() is checked by the loader.
 *
 * Styles: per-image scale/shift (a multi-style network's per-image γ/β) are fs_norm_apply's
 * affine_stride; a painted two-style mask is its optional per-pixel mask with a second
 * per-channel scale/shift (ABI 3), in the same single pass.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Bump with every change of an entry point's signature or semantics (fused.py ABI_VERSION). */
#define FS_ABI_VERSION 3
#define FS_OK 0
#define FS_EINVAL 1 /* an argument out of range */
#define FS_ENOMEM 2 /* an allocation failed */
/* Upper bounds that keep every size computation below far from int64/size_t overflow. */
#define FS_MAX_THREADS 4096
#define FS_MAX_CHANNELS (1 << 20)

int fs_abi_version(void) { return FS_ABI_VERSION; }

/* The per-pixel helpers must be inlined into the loops specialised on the channel count. */
#define FS_INLINE static inline __attribute__((always_inline))

/* A source image, read through `fs_at`. Plain: pixel (y, x) of image b starts at
 * p + b*bs + y*rs + x*cs and holds C channels. Sub-pixel (sub = 1): the output of a sub-pixel
 * convolution, 4 phases of C channels (phase 2a + b), where phase (a, b) of low-resolution pixel
 * (i, j) is stored at (i + a, j + b): full-resolution pixel (2i + a, 2j + b). */
typedef struct {
  const float* p;
  int64_t bs, rs, cs, C;
  int32_t sub;
} fs_src;

FS_INLINE const float* fs_at(const fs_src* s, int64_t b, int64_t y, int64_t x) {
  if (!s->sub) return s->p + b * s->bs + y * s->rs + x * s->cs;
  int64_t a = y & 1, c = x & 1;
  return s->p + b * s->bs + ((y >> 1) + a) * s->rs + ((x >> 1) + c) * s->cs + (2 * a + c) * s->C;
}

/* Index i of a padded axis of length n + 2p mapped back into [0, n): reflection (edge not
 * repeated, as torch's "reflect") or replication. */
FS_INLINE int64_t fs_src_index(int64_t i, int64_t n, int replicate) {
  if (replicate) return i < 0 ? 0 : (i >= n ? n - 1 : i);
  if (i < 0) i = -i;
  if (i >= n) i = 2 * n - 2 - i;
  return i;
}

FS_INLINE void fs_stats_px(const float* restrict v, const float* restrict k,
                               float* restrict row, int64_t C) {
  for (int64_t c = 0; c < C; c++) {
    const float d = v[c] - k[c];
    row[c] += d;
    row[C + c] += d * d;
  }
}

/* Shifted sums of row y into row[0, C) and squares into row[C, 2C); the source pointers
 * advance incrementally (sub-pixel: one stream per column phase). */
FS_INLINE void fs_stats_row(const fs_src* s, int64_t b, int64_t y, int64_t W,
                                const float* k, float* row, int64_t C) {
  if (!s->sub) {
    const float* v = fs_at(s, b, y, 0);
    for (int64_t x = 0; x < W; x++, v += s->cs) fs_stats_px(v, k, row, C);
    return;
  }
  const float* v0 = fs_at(s, b, y, 0);
  const float* v1 = fs_at(s, b, y, 1);
  for (int64_t x = 0; x + 1 < W; x += 2, v0 += s->cs, v1 += s->cs) {
    fs_stats_px(v0, k, row, C);
    fs_stats_px(v1, k, row, C);
  }
  if (W & 1) fs_stats_px(v0, k, row, C);
}

/* The calling thread's index in the current OpenMP team (0 without OpenMP). */
static int fs_thread(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

static int fs_src_ok(const fs_src* s, int64_t B, int64_t H, int64_t W) {
  return s && s->p && B > 0 && H > 0 && W > 0 && s->C > 0 && s->C <= FS_MAX_CHANNELS &&
         s->bs >= 0 && s->rs >= 0 && s->cs >= 0;
}

/* Instance-norm statistics of each (image, channel) over H x W, folded with the affine
 * parameters into out = x * scale + shift. scale, shift: (B, C). The variance is the biased
 * one, as torch's. Sums are of x - k, k being the channel's value at pixel (0, 0) (a shift
 * that keeps E[x^2] - E[x]^2 from cancelling when the variance is small against the mean),
 * taken per row in float and accumulated in double. Per-thread buffers are allocated up front
 * (one checked allocation), each padded to 128 bytes so that threads share no cache line. */
int fs_norm_stats(const fs_src* s, int64_t B, int64_t H, int64_t W, const float* gamma,
                  const float* beta, float eps, float* scale, float* shift, int nthreads) {
  if (!fs_src_ok(s, B, H, W) || !gamma || !beta || !scale || !shift || !(eps >= 0.0f) ||
      nthreads < 1 || nthreads > FS_MAX_THREADS)
    return FS_EINVAL;
  const int64_t C = s->C, n2 = 2 * C, stride = (n2 + 15) / 16 * 16;
  double* tot = (double*)malloc((size_t)(stride * (nthreads + 1)) * sizeof(double));
  float* rows = (float*)malloc((size_t)(stride * nthreads) * sizeof(float));
  if (!tot || !rows) {
    free(tot);
    free(rows);
    return FS_ENOMEM;
  }
  for (int64_t b = 0; b < B; b++) {
    const float* k = fs_at(s, b, 0, 0);
    for (int64_t c = 0; c < n2; c++) tot[c] = 0.0;
#pragma omp parallel num_threads(nthreads)
    {
      double* acc = tot + stride * (1 + fs_thread());
      float* row = rows + stride * fs_thread();
      for (int64_t c = 0; c < n2; c++) acc[c] = 0.0;
#pragma omp for schedule(static)
      for (int64_t y = 0; y < H; y++) {
        for (int64_t c = 0; c < n2; c++) row[c] = 0.0f;
        switch (C) {  /* constant channel counts: fully unrolled vector code */
          case 16: fs_stats_row(s, b, y, W, k, row, 16); break;
          case 32: fs_stats_row(s, b, y, W, k, row, 32); break;
          case 64: fs_stats_row(s, b, y, W, k, row, 64); break;
          case 128: fs_stats_row(s, b, y, W, k, row, 128); break;
          default: fs_stats_row(s, b, y, W, k, row, C);
        }
        for (int64_t c = 0; c < n2; c++) acc[c] += row[c];
      }
#pragma omp critical
      for (int64_t c = 0; c < n2; c++) tot[c] += acc[c];
    }
    const double n = (double)H * (double)W;
    for (int64_t c = 0; c < C; c++) {
      const double d = tot[c] / n, var = tot[C + c] / n - d * d;
      const double mean = (double)k[c] + d;
      const double g = (double)gamma[c] / sqrt((var > 0.0 ? var : 0.0) + (double)eps);
      scale[b * C + c] = (float)g;
      shift[b * C + c] = (float)((double)beta[c] - mean * g);
    }
  }
  free(rows);
  free(tot);
  return FS_OK;
}

/* One output pixel of fs_norm_apply: C channels. masked (a compile-time constant after
 * inlining): the per-pixel affine map of a painted two-style mask, scale k + m * dk and shift
 * t + m * dt; the unmasked code is exactly the one-style kernel. */
FS_INLINE void fs_pixel(float* restrict o, const float* restrict v, const float* restrict u,
                        const float* restrict k, const float* restrict t,
                        const float* restrict dk, const float* restrict dt, float m, int masked,
                        int relu, int64_t C) {
  if (masked) {
    if (u) {
      for (int64_t c = 0; c < C; c++) o[c] = u[c] + v[c] * (k[c] + m * dk[c]) + (t[c] + m * dt[c]);
    } else if (relu) {
      for (int64_t c = 0; c < C; c++) {
        const float z = v[c] * (k[c] + m * dk[c]) + (t[c] + m * dt[c]);
        o[c] = z > 0.0f ? z : 0.0f;
      }
    } else {
      for (int64_t c = 0; c < C; c++) o[c] = v[c] * (k[c] + m * dk[c]) + (t[c] + m * dt[c]);
    }
  } else if (u) {
    for (int64_t c = 0; c < C; c++) o[c] = u[c] + v[c] * k[c] + t[c];
  } else if (relu) {
    for (int64_t c = 0; c < C; c++) {
      const float z = v[c] * k[c] + t[c];
      o[c] = z > 0.0f ? z : 0.0f;
    }
  } else {
    for (int64_t c = 0; c < C; c++) o[c] = v[c] * k[c] + t[c];
  }
}

/* The affine map of one row: (k, t) per channel, and with a mask row mr (W values, NULL when
 * unmasked) the per-unit-mask changes (dk, dt). */
typedef struct {
  const float *k, *t, *dk, *dt, *mr;
} fs_row_affine;

/* One output row: the pad columns through the generic index, the interior W columns with
 * source pointers advanced incrementally (plain: one stream; sub-pixel: the two column phases,
 * each its own stream). The mask is read at the source pixel (a pad repeats a pixel's value).
 * C and masked are compile-time constants in the specialisations below. */
FS_INLINE void fs_apply_row_impl(const fs_src* s, const fs_src* skip, int64_t b, int64_t sy,
                                 int64_t W, const fs_row_affine* a, int relu, int64_t pad,
                                 int replicate, float* o, int masked, int64_t C) {
  const float *k = a->k, *t = a->t, *dk = a->dk, *dt = a->dt, *mr = a->mr;
#define FS_M(x) (masked ? mr[(x)] : 0.0f)
  for (int64_t q = 0; q < pad; q++) {
    const int64_t sx = fs_src_index(q - pad, W, replicate), sx2 = fs_src_index(W + q, W, replicate);
    fs_pixel(o + q * C, fs_at(s, b, sy, sx), skip ? fs_at(skip, b, sy, sx) : NULL, k, t, dk, dt,
             FS_M(sx), masked, relu, C);
    fs_pixel(o + (pad + W + q) * C, fs_at(s, b, sy, sx2), skip ? fs_at(skip, b, sy, sx2) : NULL,
             k, t, dk, dt, FS_M(sx2), masked, relu, C);
  }
  o += pad * C;
  if (!s->sub) {
    const float* v = fs_at(s, b, sy, 0);
    const float* u = skip ? fs_at(skip, b, sy, 0) : NULL;
    const int64_t us = skip ? skip->cs : 0;
    for (int64_t x = 0; x < W; x++, v += s->cs, u = u ? u + us : NULL, o += C)
      fs_pixel(o, v, u, k, t, dk, dt, FS_M(x), masked, relu, C);
  } else {  /* sub-pixel sources never come with a skip */
    const float* v0 = fs_at(s, b, sy, 0);
    const float* v1 = fs_at(s, b, sy, 1);
    for (int64_t x = 0; x + 1 < W; x += 2, v0 += s->cs, v1 += s->cs, o += 2 * C) {
      fs_pixel(o, v0, NULL, k, t, dk, dt, FS_M(x), masked, relu, C);
      fs_pixel(o + C, v1, NULL, k, t, dk, dt, FS_M(x + 1), masked, relu, C);
    }
    if (W & 1) fs_pixel(o, v0, NULL, k, t, dk, dt, FS_M(W - 1), masked, relu, C);
  }
#undef FS_M
}

/* fs_apply_row_impl with the mask switch taken once per row (both variants inlined). */
FS_INLINE void fs_apply_row(const fs_src* s, const fs_src* skip, int64_t b, int64_t sy,
                            int64_t W, const fs_row_affine* a, int relu, int64_t pad,
                            int replicate, float* o, int64_t C) {
  if (a->mr)
    fs_apply_row_impl(s, skip, b, sy, W, a, relu, pad, replicate, o, 1, C);
  else
    fs_apply_row_impl(s, skip, b, sy, W, a, relu, pad, replicate, o, 0, C);
}

/* out (B, H + 2*pad, W + 2*pad, C), contiguous NHWC:
 *   v = src * scale + shift (+ skip), then ReLU if relu, then padded by pad pixels
 * (reflection, or replication if replicate). scale/shift rows are (B, C) with row stride
 * affine_stride (C: per-image statistics; 0: one affine map for the whole batch).
 * mask (optional, a painted two-style mask): (B, H, W) contiguous, one value m per pixel of the
 * unpadded output; then the map at that pixel is scale + m * mscale, shift + m * mshift, with
 * mscale/mshift laid out as scale/shift (same stride). NULL: no mask (mscale/mshift unread). */
int fs_norm_apply(const fs_src* s, const fs_src* skip, int64_t B, int64_t H, int64_t W,
                  const float* scale, const float* shift, int64_t affine_stride,
                  const float* mask, const float* mscale, const float* mshift, int relu,
                  int64_t pad, int replicate, float* out, int nthreads) {
  if (!fs_src_ok(s, B, H, W) || !scale || !shift || !out || pad < 0 || nthreads < 1 ||
      nthreads > FS_MAX_THREADS || (affine_stride != 0 && affine_stride != s->C))
    return FS_EINVAL;
  if (mask && (!mscale || !mshift)) return FS_EINVAL;
  /* reflection needs pad < n (torch's rule); replication never pads more than the image */
  if (replicate ? (pad > H || pad > W) : (pad >= H || pad >= W)) return FS_EINVAL;
  /* a skip: same channels, plain source, no activation after the add (fs_pixel) */
  if (skip && (!fs_src_ok(skip, B, H, W) || skip->C != s->C || skip->sub || s->sub || relu))
    return FS_EINVAL;
  const int64_t C = s->C, Ho = H + 2 * pad, Wo = W + 2 * pad;
#pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
  for (int64_t b = 0; b < B; b++) {
    for (int64_t r = 0; r < Ho; r++) {
      const int64_t sy = fs_src_index(r - pad, H, replicate);
      const int64_t off = b * affine_stride;
      const fs_row_affine a = {scale + off, shift + off, mask ? mscale + off : NULL,
                               mask ? mshift + off : NULL, mask ? mask + (b * H + sy) * W : NULL};
      float* o = out + (b * Ho + r) * Wo * C;
      switch (C) {  /* constant channel counts: fully unrolled vector code */
        case 16: fs_apply_row(s, skip, b, sy, W, &a, relu, pad, replicate, o, 16); break;
        case 32: fs_apply_row(s, skip, b, sy, W, &a, relu, pad, replicate, o, 32); break;
        case 64: fs_apply_row(s, skip, b, sy, W, &a, relu, pad, replicate, o, 64); break;
        case 128: fs_apply_row(s, skip, b, sy, W, &a, relu, pad, replicate, o, 128); break;
        default: fs_apply_row(s, skip, b, sy, W, &a, relu, pad, replicate, o, C);
      }
    }
  }
  return FS_OK;
}

/* exp(x) for x <= 0 to about 2 ulp: Cody-Waite range reduction and a degree-6 polynomial,
 * written so that the compiler vectorises it (libm's expf is a scalar call). */
FS_INLINE float fs_exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = floorf(x * 1.44269504088896341f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23; /* 2^n as a float's bit pattern */
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* The row-split output layer's tail (fast_style.export.RowSplitConv): t is the 1 x k conv's
 * output (B, Ht, Wt, K) NHWC, channel o * rows + dy holding kernel row dy of output channel o.
 * out (B, cout, h, w) NCHW, cropped to h x w:
 *   out = 0.5 * (tanh(sum_dy t[y + dy, x, o * rows + dy]) + 1) = 1 / (1 + exp(-2 sum)).
 * One output row at a time: the sums (scalar loads, stride K; the three output channels are
 * independent accumulator chains), then the sigmoid over the row (vectorised). */
FS_INLINE float fs_sigmoid2(float z) {
  /* 1 / (1 + exp(-2z)), via exp of a non-positive argument for either sign */
  const float e = fs_exp_neg(-2.0f * fabsf(z));
  const float pos = 1.0f / (1.0f + e);
  return z >= 0.0f ? pos : e * pos;
}

static void fs_sigmoid2_inplace(float* restrict d, int64_t n) {
  for (int64_t i = 0; i < n; i++) d[i] = fs_sigmoid2(d[i]);
}

int fs_rowsplit_tail(const float* t, int64_t B, int64_t Ht, int64_t Wt, int64_t K, int64_t cout,
                     int64_t rows, int64_t h, int64_t w, float* out, int nthreads) {
  if (!t || !out || B < 1 || cout < 1 || rows < 1 || h < 1 || w < 1 || nthreads < 1 ||
      nthreads > FS_MAX_THREADS || K < 1 || K > FS_MAX_CHANNELS || cout > K || rows > K ||
      cout * rows > K || h > Ht || w > Wt || h + rows - 1 > Ht)
    return FS_EINVAL;
  /* Column strips of 64 pixels, each run top to bottom: the rows x strip working set
   * (9 x 64 x 32 floats, 72 KB) stays in L2 while each input row is read from memory once. */
  const int64_t row = Wt * K, strip = 64, nstrips = (w + strip - 1) / strip;
  const int64_t plane = h * w;
#pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
  for (int64_t b = 0; b < B; b++) {
    for (int64_t st = 0; st < nstrips; st++) {
      const int64_t x0 = st * strip, x1 = x0 + strip < w ? x0 + strip : w;
      for (int64_t y = 0; y < h; y++) {
        const float* base = t + (b * Ht + y) * row;
        float* dst = out + (b * cout * h + y) * w;  /* channel o at dst + o * plane */
        if (cout == 3) {
          for (int64_t x = x0; x < x1; x++) {
            const float* v = base + x * K;
            float z0 = 0.0f, z1 = 0.0f, z2 = 0.0f;
            for (int64_t dy = 0; dy < rows; dy++, v += row + 1) {
              z0 += v[0];
              z1 += v[rows];
              z2 += v[2 * rows];
            }
            dst[x] = z0;
            dst[plane + x] = z1;
            dst[2 * plane + x] = z2;
          }
        } else {
          for (int64_t o = 0; o < cout; o++) {
            for (int64_t x = x0; x < x1; x++) {
              const float* v = base + x * K + o * rows;
              float z = 0.0f;
              for (int64_t dy = 0; dy < rows; dy++) z += v[dy * (row + 1)];
              dst[o * plane + x] = z;
            }
          }
        }
        for (int64_t o = 0; o < cout; o++) fs_sigmoid2_inplace(dst + o * plane + x0, x1 - x0);
      }
    }
  }
  return FS_OK;
}
