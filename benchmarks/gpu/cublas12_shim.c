/* libcublas.so.12 for a machine that has only CUDA 13's cuBLAS (the lent H200 image).

   The faiss-gpu wheels on PyPI are built against CUDA 12 and need libcublas.so.12, whose
   wheel (~400 MB) cannot travel to the device machine (64 MiB per call). FAISS calls just
   these eight cuBLAS functions, whose C signatures are the same in cuBLAS 13, so this shim
   exports them under the version node libcublas.so.12 and forwards each to libcublas.so.13,
   found on LD_LIBRARY_PATH. A benchmark aid only: ShopSearch itself needs no shim. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int st_t; /* cublasStatus_t */

static void *lib(void) {
    static void *h;
    if (!h) {
        h = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
        if (!h) { fprintf(stderr, "cublas12 shim: %s\n", dlerror()); abort(); }
    }
    return h;
}
#define FWD(name) static void *f; if (!f) f = dlsym(lib(), #name); if (!f) { fprintf(stderr, "cublas12 shim: no %s\n", #name); abort(); }

st_t cublasCreate_v2(void **h) { FWD(cublasCreate_v2) return ((st_t(*)(void **))f)(h); }
st_t cublasDestroy_v2(void *h) { FWD(cublasDestroy_v2) return ((st_t(*)(void *))f)(h); }
st_t cublasSetStream_v2(void *h, void *s) { FWD(cublasSetStream_v2) return ((st_t(*)(void *, void *))f)(h, s); }
st_t cublasGetMathMode(void *h, int *m) { FWD(cublasGetMathMode) return ((st_t(*)(void *, int *))f)(h, m); }
st_t cublasSetMathMode(void *h, int m) { FWD(cublasSetMathMode) return ((st_t(*)(void *, int))f)(h, m); }
st_t cublasSgemmEx(void *h, int ta, int tb, int m, int n, int k, const float *alpha, const void *A, int at, int lda,
                   const void *B, int bt, int ldb, const float *beta, void *C, int ct, int ldc) {
    FWD(cublasSgemmEx)
    return ((st_t(*)(void *, int, int, int, int, int, const float *, const void *, int, int, const void *, int, int,
                     const float *, void *, int, int))f)(h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc);
}
st_t cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at, int lda,
                  const void *B, int bt, int ldb, const void *beta, void *C, int ct, int ldc, int comp, int algo) {
    FWD(cublasGemmEx)
    return ((st_t(*)(void *, int, int, int, int, int, const void *, const void *, int, int, const void *, int, int,
                     const void *, void *, int, int, int, int))f)(h, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb,
                                                                  beta, C, ct, ldc, comp, algo);
}
st_t cublasGemmStridedBatchedEx(void *h, int ta, int tb, int m, int n, int k, const void *alpha, const void *A, int at,
                                int lda, long long sa, const void *B, int bt, int ldb, long long sb, const void *beta,
                                void *C, int ct, int ldc, long long sc, int batch, int comp, int algo) {
    FWD(cublasGemmStridedBatchedEx)
    return ((st_t(*)(void *, int, int, int, int, int, const void *, const void *, int, int, long long, const void *,
                     int, int, long long, const void *, void *, int, int, long long, int, int, int))f)(
        h, ta, tb, m, n, k, alpha, A, at, lda, sa, B, bt, ldb, sb, beta, C, ct, ldc, sc, batch, comp, algo);
}
