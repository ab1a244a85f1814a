#ifndef KVC_CBLAS_SHIM_H
#define KVC_CBLAS_SHIM_H
#include <cblas.h>

// LAPACK routines exported by Debian's OpenBLAS build (Fortran ABI: every argument by pointer).
// Declared here because Debian ships no lapack.h next to OpenBLAS's cblas.h.
void sgesdd_(const char *jobz, const int *m, const int *n, float *a, const int *lda,
             float *s, float *u, const int *ldu, float *vt, const int *ldvt,
             float *work, const int *lwork, int *iwork, int *info);
void ssyevd_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda,
             float *w, float *work, const int *lwork, int *iwork, const int *liwork, int *info);
void sgels_(const char *trans, const int *m, const int *n, const int *nrhs, float *a, const int *lda,
            float *b, const int *ldb, float *work, const int *lwork, int *info);
void sposv_(const char *uplo, const int *n, const int *nrhs, float *a, const int *lda,
            float *b, const int *ldb, int *info);
#endif
