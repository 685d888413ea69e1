// Kernels of the GPU student (src/gpu/student.rs): everything around the GEMMs and the
// LSTM cell. One thread per element unless a comment says otherwise. Matrices are row-major.

__device__ __forceinline__ long thread_index() { return (long)blockIdx.x * blockDim.x + threadIdx.x; }

// out[r, :] = table[ids[r], :] (embedding lookup).
extern "C" __global__ void gather_rows(const float *table, const int *ids, float *out, int rows, int width) {
    long idx = thread_index();
    if (idx >= (long)rows * width) return;
    long r = idx / width, j = idx % width;
    out[idx] = table[(long)ids[r] * width + j];
}

// table[ids[r], :] += src[r, :] (embedding gradient; ids repeat, hence atomics).
extern "C" __global__ void scatter_add_rows(const float *src, const int *ids, float *table, int rows, int width) {
    long idx = thread_index();
    if (idx >= (long)rows * width) return;
    long r = idx / width, j = idx % width;
    atomicAdd(&table[(long)ids[r] * width + j], src[idx]);
}

// A counter-based hash (murmur3's finaliser over three words): the dropout mask of element
// `i` at step `step` needs no state and is the same on every launch configuration.
__device__ __forceinline__ unsigned int mix(unsigned int h) {
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    return h;
}

// Inverted dropout: keeps x with probability 1 - p, scaled by 1 / (1 - p); `mask` receives
// the factor (0 or 1 / (1 - p)) for the backward pass.
extern "C" __global__ void dropout_forward(float *x, float *mask, int n, float p, unsigned int seed, unsigned int step) {
    long idx = thread_index();
    if (idx >= n) return;
    unsigned int h = mix(mix(mix(seed) ^ step) ^ (unsigned int)idx);
    float u = (h >> 8) * (1.0f / 16777216.0f);
    float m = u < p ? 0.0f : 1.0f / (1.0f - p);
    mask[idx] = m;
    x[idx] *= m;
}

// x *= y, element-wise (dropout backward: the gradient times the mask).
extern "C" __global__ void multiply(float *x, const float *y, int n) {
    long idx = thread_index();
    if (idx < n) x[idx] *= y[idx];
}

// x[r, :] = row (a bias, before a GEMM accumulates into x).
extern "C" __global__ void fill_rows(float *x, const float *row, int rows, int width) {
    long idx = thread_index();
    if (idx < (long)rows * width) x[idx] = row[idx % width];
}

// x[r, :] += row.
extern "C" __global__ void add_rows(float *x, const float *row, int rows, int width) {
    long idx = thread_index();
    if (idx < (long)rows * width) x[idx] += row[idx % width];
}

// out[j] = sum over r of x[r, j] (+ out[j] if accumulate); one thread per column.
extern "C" __global__ void column_sums(const float *x, float *out, int rows, int width, int accumulate) {
    long j = thread_index();
    if (j >= width) return;
    float s = 0.0f;
    for (long r = 0; r < rows; r++) s += x[r * width + j];
    out[j] = accumulate ? out[j] + s : s;
}

extern "C" __global__ void tanh_forward(float *x, int n) {
    long idx = thread_index();
    if (idx < n) x[idx] = tanhf(x[idx]);
}

// dy *= 1 - y², y = tanh(x).
extern "C" __global__ void tanh_backward(const float *y, float *dy, int n) {
    long idx = thread_index();
    if (idx < n) dy[idx] *= 1.0f - y[idx] * y[idx];
}

// out[order[r], :] = [h_fwd[r, :], h_bwd[r, :]]: final states, packed order → caller's order.
extern "C" __global__ void unpack_final_states(const float *h_fwd, const float *h_bwd, const int *order, float *out, int batch, int hidden) {
    long idx = thread_index();
    if (idx >= (long)batch * hidden) return;
    long r = idx / hidden, j = idx % hidden;
    long b = order[r];
    out[b * 2 * hidden + j] = h_fwd[idx];
    out[b * 2 * hidden + hidden + j] = h_bwd[idx];
}

// The backward of unpack_final_states.
extern "C" __global__ void pack_final_state_grads(const float *d_out, const int *order, float *d_fwd, float *d_bwd, int batch, int hidden) {
    long idx = thread_index();
    if (idx >= (long)batch * hidden) return;
    long r = idx / hidden, j = idx % hidden;
    long b = order[r];
    d_fwd[idx] = d_out[b * 2 * hidden + j];
    d_bwd[idx] = d_out[b * 2 * hidden + hidden + j];
}

// Pair features [a, b, |a-b|, a*b] (mode 0, Tang) or [a, b, a+b, |a-b|] (mode 1, the seed)
// from encodings [2·examples, d] (all a rows, then all b rows) → [examples, 4d].
extern "C" __global__ void pair_features_forward(const float *enc, float *out, int examples, int d, int mode) {
    long idx = thread_index();
    if (idx >= (long)examples * d) return;
    long r = idx / d, j = idx % d;
    float a = enc[r * d + j], b = enc[((long)examples + r) * d + j];
    float *o = out + r * 4 * d;
    o[j] = a;
    o[d + j] = b;
    o[2 * d + j] = mode == 0 ? fabsf(a - b) : a + b;
    o[3 * d + j] = mode == 0 ? a * b : fabsf(a - b);
}

extern "C" __global__ void pair_features_backward(const float *enc, const float *d_out, float *d_enc, int examples, int d, int mode) {
    long idx = thread_index();
    if (idx >= (long)examples * d) return;
    long r = idx / d, j = idx % d;
    float a = enc[r * d + j], b = enc[((long)examples + r) * d + j];
    const float *g = d_out + r * 4 * d;
    float sign = a > b ? 1.0f : (a < b ? -1.0f : 0.0f);
    float g3 = g[2 * d + j], g4 = g[3 * d + j];
    float da, db;
    if (mode == 0) {
        da = g[j] + sign * g3 + b * g4;
        db = g[d + j] - sign * g3 + a * g4;
    } else {
        da = g[j] + g3 + sign * g4;
        db = g[d + j] + g3 - sign * g4;
    }
    d_enc[r * d + j] = da;
    d_enc[((long)examples + r) * d + j] = db;
}

// *out += sum of x² (for the global gradient norm). Grid-stride partial sums, one atomic per thread.
extern "C" __global__ void sum_squares(const float *x, int n, float *out) {
    float s = 0.0f;
    for (long i = thread_index(); i < n; i += (long)gridDim.x * blockDim.x) s += x[i] * x[i];
    atomicAdd(out, s);
}

extern "C" __global__ void scale(float *x, int n, float factor) {
    long idx = thread_index();
    if (idx < n) x[idx] *= factor;
}

// PyTorch's Adadelta (as src/optim.rs).
__device__ __forceinline__ void adadelta_one(float *p, float g, float *sq, float *dl, float rho, float eps, float lr) {
    *sq = rho * *sq + (1.0f - rho) * g * g;
    float delta = sqrtf(*dl + eps) / sqrtf(*sq + eps) * g;
    *dl = rho * *dl + (1.0f - rho) * delta * delta;
    *p -= lr * delta;
}

extern "C" __global__ void adadelta_dense(float *p, const float *g, float *sq, float *dl, int n, float rho, float eps, float lr) {
    long idx = thread_index();
    if (idx < n) adadelta_one(p + idx, g[idx], sq + idx, dl + idx, rho, eps, lr);
}

// Adadelta on the listed rows only (the batch's embedding rows); the averages of a row skipped
// for k steps decay by rho^k first, which is what k zero-gradient steps would have done.
// row_step[row] is the step of the row's last update; one thread per (listed row, column).
extern "C" __global__ void adadelta_rows(float *p, const float *g, float *sq, float *dl, const int *rows, int nrows, int width,
                                         const int *row_step, int step, float rho, float eps, float lr) {
    long idx = thread_index();
    if (idx >= (long)nrows * width) return;
    long row = rows[idx / width];
    long i = row * width + idx % width;
    int skipped = step - row_step[row] - 1;
    if (skipped > 0) {
        float decay = powf(rho, (float)skipped);
        sq[i] *= decay;
        dl[i] *= decay;
    }
    adadelta_one(p + i, g[i], sq + i, dl + i, rho, eps, lr);
}

// Marks the listed rows as updated at `step` (after adadelta_rows, which reads the old marks).
extern "C" __global__ void mark_rows(const int *rows, int nrows, int *row_step, int step) {
    long idx = thread_index();
    if (idx < nrows) row_step[rows[idx]] = step;
}

// PyTorch's Adam without weight decay (as src/optim.rs): step_size = lr / (1 - beta1^t).
extern "C" __global__ void adam(float *p, const float *g, float *m, float *v, int n, float beta1, float beta2, float eps,
                                float step_size, float correction2) {
    long idx = thread_index();
    if (idx >= n) return;
    float gi = g[idx];
    m[idx] = beta1 * m[idx] + (1.0f - beta1) * gi;
    v[idx] = beta2 * v[idx] + (1.0f - beta2) * gi * gi;
    p[idx] -= step_size * m[idx] / (sqrtf(v[idx] / correction2) + eps);
}
