// Fused LSTM cell, the GPU twin of src/ops/cell.rs (same layouts, same arithmetic).
//
// The input projection of all time steps (one cuBLAS GEMM) and the recurrent GEMM of a step
// are added into `gates` beforehand; these kernels apply the activations and produce the new
// cell and hidden state (forward), or the gate gradients (backward), one thread per
// (row, unit). Rows are sorted longest first, so a step runs only its first `rows` rows.
//
// gates: [rows, 4H] pre-activations in the order i, f, g, o (PyTorch's); forward overwrites
// them with the activations, which backward reads.

extern "C" __global__ void lstm_cell_forward(float *gates, float *c, float *h, int rows, int hidden) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * hidden) return;
    int r = idx / hidden, j = idx % hidden;
    float *g = gates + (size_t)r * 4 * hidden;
    float i = 1.0f / (1.0f + expf(-g[j]));
    float f = 1.0f / (1.0f + expf(-g[hidden + j]));
    float cand = tanhf(g[2 * hidden + j]);
    float o = 1.0f / (1.0f + expf(-g[3 * hidden + j]));
    float cell = f * c[idx] + i * cand;
    g[j] = i;
    g[hidden + j] = f;
    g[2 * hidden + j] = cand;
    g[3 * hidden + j] = o;
    c[idx] = cell;
    h[idx] = o * tanhf(cell);
}

// From activated `gates`, the cell after the step (`cells`) and before it (`prev_cells`),
// and the incoming dh and dc: writes the pre-activation gate gradients into `d_gates` and
// replaces dc with the gradient with respect to the previous cell.
extern "C" __global__ void lstm_cell_backward(const float *gates, const float *cells, const float *prev_cells,
                                              const float *dh, float *dc, float *d_gates, int rows, int hidden) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * hidden) return;
    int r = idx / hidden, j = idx % hidden;
    const float *g = gates + (size_t)r * 4 * hidden;
    float *dg = d_gates + (size_t)r * 4 * hidden;
    float i = g[j], f = g[hidden + j], cand = g[2 * hidden + j], o = g[3 * hidden + j];
    float tc = tanhf(cells[idx]);
    float dcv = dc[idx] + dh[idx] * o * (1.0f - tc * tc);
    dg[j] = dcv * cand * i * (1.0f - i);
    dg[hidden + j] = dcv * prev_cells[idx] * f * (1.0f - f);
    dg[2 * hidden + j] = dcv * i * (1.0f - cand * cand);
    dg[3 * hidden + j] = dh[idx] * tc * o * (1.0f - o);
    dc[idx] = dcv * f;
}
