//! The BLAS routines padim calls directly, from the OpenBLAS that ndarray-linalg links: the
//! co-moments' symmetric rank-k update (`cblas_dsyrk`), the f64 distances' triangular product
//! (`cblas_dtrmm`), and general products as the benchmarks'
//! yardstick. Single-threaded BLAS is assumed ([`crate::single_threaded_blas`]): the callers
//! parallelise over patches.
#![allow(unsafe_code)]

use std::ffi::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;
const UPPER: c_int = 121;
const LOWER: c_int = 122;
const NON_UNIT: c_int = 131;
const RIGHT: c_int = 142;

unsafe extern "C" {
    fn cblas_dsyrk(
        order: c_int,
        uplo: c_int,
        trans: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
    fn cblas_dtrmm(
        order: c_int,
        side: c_int,
        uplo: c_int,
        trans: c_int,
        diag: c_int,
        m: c_int,
        n: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *mut f64,
        ldb: c_int,
    );
    fn cblas_dgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *const f64,
        ldb: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
}

fn int(value: usize) -> c_int {
    c_int::try_from(value).expect("a matrix dimension within BLAS's int")
}

/// `b := b a` for `b` row-major `n x k` and `a` row-major `k x k` lower triangular (f64).
pub fn dtrmm_right_lower(n: usize, k: usize, a: &[f64], b: &mut [f64]) {
    assert!(a.len() >= k * k && b.len() >= n * k, "matrix sizes");
    if n == 0 || k == 0 {
        return;
    }
    // SAFETY: `a` holds k x k and `b` n x k values (checked above), row-major with leading
    // dimension k; BLAS reads `a` and writes `b` within those bounds only.
    unsafe {
        cblas_dtrmm(
            ROW_MAJOR,
            RIGHT,
            LOWER,
            NO_TRANS,
            NON_UNIT,
            int(n),
            int(k),
            1.0,
            a.as_ptr(),
            int(k),
            b.as_mut_ptr(),
            int(k),
        )
    }
}

/// `c := a b` for row-major `a` (`n x k`), `b` (`k x k`) and `c` (`n x k`), f32: the general
/// product of the distances' shapes, the benchmarks' yardstick.
pub fn sgemm(n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= n * k && b.len() >= k * k && c.len() >= n * k, "matrix sizes");
    if n == 0 || k == 0 {
        return;
    }
    // SAFETY: the three matrices hold the values their dimensions say (checked above).
    unsafe {
        cblas_sgemm(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            int(n),
            int(k),
            int(k),
            1.0,
            a.as_ptr(),
            int(k),
            b.as_ptr(),
            int(k),
            0.0,
            c.as_mut_ptr(),
            int(k),
        )
    }
}

/// `c := a b` for row-major `a` (`m x k`), `b` (`k x n`) and `c` (`m x n`), f64: the benchmarks'
/// yardstick for the fit's products.
pub fn dgemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "matrix sizes");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // SAFETY: the three matrices hold the values their dimensions say (checked above).
    unsafe {
        cblas_dgemm(
            ROW_MAJOR,
            NO_TRANS,
            NO_TRANS,
            int(m),
            int(n),
            int(k),
            1.0,
            a.as_ptr(),
            int(k),
            b.as_ptr(),
            int(n),
            0.0,
            c.as_mut_ptr(),
            int(n),
        )
    }
}

/// `c += a^T a` for row-major `a` (`rows x d`) on the upper triangle of row-major `c` (`d x d`),
/// then the lower triangle made its mirror: `c` stays a full symmetric matrix.
pub fn add_gram(a: &[f64], rows: usize, d: usize, c: &mut [f64]) {
    assert!(a.len() >= rows * d && c.len() >= d * d, "matrix sizes");
    if rows == 0 || d == 0 {
        return;
    }
    // SAFETY: `a` holds rows x d and `c` d x d values (checked above), row-major with leading
    // dimension d; BLAS reads `a` and writes the upper triangle of `c` within those bounds only.
    unsafe {
        cblas_dsyrk(ROW_MAJOR, UPPER, TRANS, int(d), int(rows), 1.0, a.as_ptr(), int(d), 1.0, c.as_mut_ptr(), int(d))
    }
    for i in 1..d {
        for j in 0..i {
            c[i * d + j] = c[j * d + i];
        }
    }
}
