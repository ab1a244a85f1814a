import CBLAS

/// The project's single door to BLAS/LAPACK, so another provider (Accelerate) can serve on Apple platforms
/// by changing this file only. Matrices are row-major and contiguous unless a leading dimension is given.
public enum BLAS {
    /// C[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C.
    @inline(__always)
    public static func gemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
        b: UnsafePointer<Float>, ldb: Int? = nil,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil
    ) {
        let lda = lda ?? (transA ? m : k)
        let ldb = ldb ?? (transB ? k : n)
        let ldc = ldc ?? n
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb),
                    beta, c, blasint(ldc))
    }

    /// y[m] = alpha * op(A)[m,n] · x + beta * y, A row-major.
    @inline(__always)
    public static func gemv(
        trans: Bool = false, rows: Int, cols: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
        x: UnsafePointer<Float>, beta: Float = 0, y: UnsafeMutablePointer<Float>
    ) {
        cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, blasint(rows), blasint(cols), alpha,
                    a, blasint(lda ?? cols), x, 1, beta, y, 1)
    }

    @inline(__always)
    public static func axpy(n: Int, alpha: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        cblas_saxpy(blasint(n), alpha, x, 1, y, 1)
    }

    @inline(__always)
    public static func dot(n: Int, x: UnsafePointer<Float>, y: UnsafePointer<Float>) -> Float {
        cblas_sdot(blasint(n), x, 1, y, 1)
    }

    /// Number of threads OpenBLAS uses; `OPENBLAS_NUM_THREADS` sets the default.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }
}

/// Truncated SVD and friends from LAPACK (OpenBLAS exports the Fortran symbols).
public enum LAPACK {
    public struct Failure: Error, CustomStringConvertible {
        public let routine: String
        public let info: Int
        public var description: String { "LAPACK \(routine) failed with info=\(info)" }
    }

    /// Thin SVD of a row-major m x n matrix: returns U [m, p], S [p], Vt [p, n] with p = min(m, n),
    /// all row-major. The input is not modified.
    public static func svd(_ a: [Float], rows m: Int, cols n: Int) throws -> (u: [Float], s: [Float], vt: [Float]) {
        precondition(a.count == m * n, "svd: expected \(m * n) elements, got \(a.count)")
        let p = min(m, n)
        // LAPACK is column-major: the row-major m x n matrix is the column-major n x m matrix A^T.
        // SVD(A^T) = V S U^T, so its "U" (n x p, col-major) is our V and its "VT" (p x m) is our U^T.
        var at = a
        var s = [Float](repeating: 0, count: p)
        var uCol = [Float](repeating: 0, count: n * p)   // column-major n x p  == row-major p x n = Vt
        var vtCol = [Float](repeating: 0, count: p * m)  // column-major p x m  == row-major m x p = U
        var jobz = Int8(UInt8(ascii: "S"))
        var mm = Int32(n), nn = Int32(m), lda = Int32(n), ldu = Int32(n), ldvt = Int32(p)
        var lwork: Int32 = -1, info: Int32 = 0
        var iwork = [Int32](repeating: 0, count: 8 * p)
        var query: Float = 0
        sgesdd_(&jobz, &mm, &nn, &at, &lda, &s, &uCol, &ldu, &vtCol, &ldvt, &query, &lwork, &iwork, &info)
        if info != 0 { throw Failure(routine: "sgesdd (workspace query)", info: Int(info)) }
        lwork = Int32(query)
        var work = [Float](repeating: 0, count: max(1, Int(lwork)))
        sgesdd_(&jobz, &mm, &nn, &at, &lda, &s, &uCol, &ldu, &vtCol, &ldvt, &work, &lwork, &iwork, &info)
        if info != 0 { throw Failure(routine: "sgesdd", info: Int(info)) }
        return (vtCol, s, uCol)
    }
}
