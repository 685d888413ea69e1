// Kernels of the GPU teacher's inference (src/gpu/bert.rs): everything around the cuBLAS
// GEMMs. Activations are row-major [batch·seq, hidden], heads side by side, as on the CPU.

__device__ __forceinline__ long thread_index() { return (long)blockIdx.x * blockDim.x + threadIdx.x; }

// x[i, :] = word[ids[i]] + position[i % seq] + token_type[types[i]].
extern "C" __global__ void embeddings_sum(const float *word, const float *position, const float *token_type, const int *ids,
                                          const int *types, float *x, int rows, int seq, int hidden) {
    long idx = thread_index();
    if (idx >= (long)rows * hidden) return;
    long i = idx / hidden, j = idx % hidden;
    x[idx] = word[(long)ids[i] * hidden + j] + position[(i % seq) * hidden + j] + token_type[(long)types[i] * hidden + j];
}

// Sum over a block of 256 threads (8 warps).
__device__ float block_sum(float v, float *shared) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < blockDim.x / 32; w++) total += shared[w];
    return total;
}

// out[r, :] = LayerNorm(x[r, :] + residual[r, :]) (residual may be null); one block of 256
// threads per row. Two passes (mean, then variance of the centred values), as on the CPU.
extern "C" __global__ void layer_norm(const float *x, const float *residual, const float *gamma, const float *beta, float *out,
                                      int rows, int hidden, float eps) {
    __shared__ float shared[32];
    long r = blockIdx.x;
    if (r >= rows) return;
    const float *xr = x + r * hidden;
    const float *rr = residual ? residual + r * hidden : 0;
    float s = 0.0f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) s += xr[j] + (rr ? rr[j] : 0.0f);
    float mean = block_sum(s, shared) / hidden;
    float v = 0.0f;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float d = xr[j] + (rr ? rr[j] : 0.0f) - mean;
        v += d * d;
    }
    float inv = rsqrtf(block_sum(v, shared) / hidden + eps);
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) {
        float d = xr[j] + (rr ? rr[j] : 0.0f) - mean;
        out[r * hidden + j] = d * inv * gamma[j] + beta[j];
    }
}

// Where element `idx` of a [batch·seq, heads·dim] matrix sits in [batch, heads, seq, dim].
__device__ __forceinline__ long head_major_index(long idx, int seq, int heads, int dim) {
    long hidden = (long)heads * dim;
    long row = idx / hidden, col = idx % hidden;
    long b = row / seq, t = row % seq, h = col / dim, d = col % dim;
    return ((b * heads + h) * seq + t) * dim + d;
}

// [batch·seq, heads·dim] → [batch, heads, seq, dim], so each (example, head) is one contiguous
// matrix for the batched GEMMs.
extern "C" __global__ void split_heads(const float *x, float *out, int batch, int seq, int heads, int dim) {
    long idx = thread_index();
    if (idx >= (long)batch * seq * heads * dim) return;
    out[head_major_index(idx, seq, heads, dim)] = x[idx];
}

// The inverse of split_heads.
extern "C" __global__ void merge_heads(const float *x, float *out, int batch, int seq, int heads, int dim) {
    long idx = thread_index();
    if (idx >= (long)batch * seq * heads * dim) return;
    out[idx] = x[head_major_index(idx, seq, heads, dim)];
}

// In place over scores [batch, heads, seq (queries), seq (keys)]: softmax(scale·s + mask[b, key])
// per query row; one warp per row.
extern "C" __global__ void masked_softmax(float *scores, const float *mask, int batch, int heads, int seq, float scale) {
    long row = ((long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= (long)batch * heads * seq) return;
    long b = row / ((long)heads * seq);
    float *s = scores + row * seq;
    const float *m = mask + b * seq;
    float mx = -3.0e38f;
    for (int k = lane; k < seq; k += 32) mx = fmaxf(mx, s[k] * scale + m[k]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    float sum = 0.0f;
    for (int k = lane; k < seq; k += 32) {
        float e = expf(s[k] * scale + m[k] - mx);
        s[k] = e;
        sum += e;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    for (int k = lane; k < seq; k += 32) s[k] /= sum;
}

// Exact GELU (erf), in place.
extern "C" __global__ void gelu(float *x, int n) {
    long idx = thread_index();
    if (idx < n) x[idx] = 0.5f * x[idx] * (1.0f + erff(x[idx] * 0.70710678118654752f));
}

// out[b, :] = x[b·seq, :] (the [CLS] row of each example).
extern "C" __global__ void cls_rows(const float *x, float *out, int batch, int seq, int hidden) {
    long idx = thread_index();
    if (idx >= (long)batch * hidden) return;
    long b = idx / hidden, j = idx % hidden;
    out[idx] = x[b * seq * hidden + j];
}
