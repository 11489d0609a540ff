//! Vector arithmetic shared by the stages: unit lengths, mean directions, dot products and cosines.
//!
//! Dot products are the hot path of match features (about ten million multiply-adds per request, see
//! `serve::features`), so they are written for the compiler to vectorise: sums run in independent lanes, and
//! each kernel is compiled once more for the widest instructions the CPU has (AVX-512, else AVX2 with FMA),
//! picked at run time. Every path is tested against a sequential sum.

/// Scales `v` to unit length in place (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A copy scaled to unit length (a zero vector stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let mut v = v.to_vec();
    normalize(&mut v);
    v
}

/// Normalised mean of the normalised vectors (those of the first one's dimension); None when there are none.
pub fn mean_direction<'a>(vectors: impl IntoIterator<Item = &'a [f32]>) -> Option<Vec<f32>> {
    let mut sum: Option<Vec<f32>> = None;
    for v in vectors {
        let v = normalized(v);
        match &mut sum {
            None => sum = Some(v),
            Some(s) if s.len() == v.len() => s.iter_mut().zip(&v).for_each(|(a, b)| *a += b),
            Some(_) => {}
        }
    }
    sum.map(|mut s| {
        normalize(&mut s);
        s
    })
}

/// The rows as one matrix, each scaled to unit length (zero rows stay zero), so that a matrix product gives
/// every cosine at once. The column count is the first row's length.
pub fn unit_rows(rows: &[&[f32]]) -> ndarray::Array2<f32> {
    let dim = rows.first().map_or(0, |r| r.len());
    // Filled row by row rather than zeroed first and then copied into: this runs per lookup request.
    let mut data = Vec::with_capacity(rows.len() * dim);
    for row in rows {
        let start = data.len();
        data.extend_from_slice(&row[..row.len().min(dim)]);
        data.resize(start + dim, 0.0);
        normalize(&mut data[start..]);
    }
    ndarray::Array2::from_shape_vec((rows.len(), dim), data).expect("rows x dim values")
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// The instruction sets the kernels are compiled for, widest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Simd {
    Avx512,
    Avx2Fma,
    /// What every build target has (SSE2 on x86-64).
    Baseline,
}

impl Simd {
    const WIDEST_FIRST: [Simd; 3] = [Simd::Avx512, Simd::Avx2Fma, Simd::Baseline];

    /// Whether this CPU runs the kernels compiled for `self` (std caches the CPUID answers, so this is a few
    /// loads per call).
    fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Simd::Avx512 => has!("avx512f"),
                Simd::Avx2Fma => has!("avx2") && has!("fma"),
                Simd::Baseline => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Simd::Baseline
        }
    }

    /// The widest this CPU runs.
    fn detect() -> Simd {
        Simd::WIDEST_FIRST
            .into_iter()
            .find(|s| s.supported())
            .unwrap_or(Simd::Baseline)
    }
}

/// The dot product (extra elements of the longer slice are ignored).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(Simd::detect(), a, b)
}

fn dot_with(simd: Simd, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    match simd {
        // SAFETY (both arms): callers pass a `Simd` whose `supported()` is true (`detect` does), so the CPU has
        // the features the function is compiled for.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma => unsafe { x86::dot_avx2_fma(a, b) },
        _ => lanes_dot::<8>(a, b, |x, y, acc| x * y + acc),
    }
}

/// Every dot product between a row of `a` and a row of `b`, row-major: `out[i * b.len() + j] = a[i] . b[j]`,
/// over the first `dim` elements of each row.
///
/// # Panics
/// When a row is shorter than `dim`.
pub fn dot_products(a: &[&[f32]], b: &[&[f32]], dim: usize) -> Vec<f32> {
    dot_products_with(Simd::detect(), a, b, dim)
}

fn dot_products_with(simd: Simd, a: &[&[f32]], b: &[&[f32]], dim: usize) -> Vec<f32> {
    let mut out = vec![0.0; a.len() * b.len()];
    match simd {
        // SAFETY: as in `dot_with`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::dot_products_avx512(a, b, dim, &mut out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2Fma => unsafe { x86::dot_products_avx2_fma(a, b, dim, &mut out) },
        _ => {
            let fma = |x: f32, y: f32, acc: f32| x * y + acc;
            tiled_dot_products(
                a,
                b,
                dim,
                &mut out,
                |a, b| portable_tile::<4, 2, 4>(a, b, fma),
                |x, y| lanes_dot::<4>(x, y, fma),
            )
        }
    }
    out
}

/// The kernels compiled for wider instruction sets than the build target's. The single dot products only
/// instantiate the portable code for those features; the tiles are written in intrinsics, because with the
/// portable tile the compiler keeps the accumulators in memory as well as in registers (a store per
/// multiply-add, which halved its speed).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{lanes_dot, tiled_dot_products};

    /// Four accumulators, so that four multiply-adds are in flight instead of one chain waiting on each.
    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let whole = n - n % 64;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        while k < whole {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `k + 16 * j + 16 <= whole <= n`, within both slices.
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_ps(a.as_ptr().add(k + 16 * j)),
                        _mm512_loadu_ps(b.as_ptr().add(k + 16 * j)),
                    )
                };
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
            k += 64;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum) + lanes_dot::<16>(&a[whole..n], &b[whole..n], f32::mul_add)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        lanes_dot::<8>(a, b, f32::mul_add)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_products_avx512(a: &[&[f32]], b: &[&[f32]], dim: usize, out: &mut [f32]) {
        tiled_dot_products(
            a,
            b,
            dim,
            out,
            |a, b| tile_avx512(a, b),
            |x, y| lanes_dot::<16>(x, y, f32::mul_add),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_products_avx2_fma(a: &[&[f32]], b: &[&[f32]], dim: usize, out: &mut [f32]) {
        tiled_dot_products(
            a,
            b,
            dim,
            out,
            |a, b| tile_avx2_fma(a, b),
            |x, y| lanes_dot::<8>(x, y, f32::mul_add),
        )
    }

    /// A 4 x 4 tile (rows of one length): 16 accumulators of 16 lanes, within AVX-512's 32 registers.
    #[target_feature(enable = "avx512f")]
    fn tile_avx512(a: &[&[f32]; 4], b: &[&[f32]; 4]) -> [[f32; 4]; 4] {
        let dim = a[0].len();
        let whole = dim - dim % 16;
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let (mut x, mut y) = ([_mm512_setzero_ps(); 4], [_mm512_setzero_ps(); 4]);
        let mut k = 0;
        while k < whole {
            for i in 0..4 {
                // SAFETY: every row is `dim` long and `k + 16 <= whole <= dim`.
                unsafe {
                    x[i] = _mm512_loadu_ps(a[i].as_ptr().add(k));
                    y[i] = _mm512_loadu_ps(b[i].as_ptr().add(k));
                }
            }
            for i in 0..4 {
                for j in 0..4 {
                    acc[i][j] = _mm512_fmadd_ps(x[i], y[j], acc[i][j]);
                }
            }
            k += 16;
        }
        let mut sums = [[0f32; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                let tail = (whole..dim).fold(0.0, |s, k| a[i][k].mul_add(b[j][k], s));
                sums[i][j] = _mm512_reduce_add_ps(acc[i][j]) + tail;
            }
        }
        sums
    }

    /// A 2 x 4 tile (rows of one length): 8 accumulators of 8 lanes, leaving AVX2's other 8 registers for
    /// the operands.
    #[target_feature(enable = "avx2,fma")]
    fn tile_avx2_fma(a: &[&[f32]; 2], b: &[&[f32]; 4]) -> [[f32; 4]; 2] {
        let dim = a[0].len();
        let whole = dim - dim % 8;
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let mut k = 0;
        while k < whole {
            // SAFETY: every row is `dim` long and `k + 8 <= whole <= dim`.
            let (x0, x1) = unsafe {
                (
                    _mm256_loadu_ps(a[0].as_ptr().add(k)),
                    _mm256_loadu_ps(a[1].as_ptr().add(k)),
                )
            };
            for j in 0..4 {
                // SAFETY: as above.
                let y = unsafe { _mm256_loadu_ps(b[j].as_ptr().add(k)) };
                acc[0][j] = _mm256_fmadd_ps(x0, y, acc[0][j]);
                acc[1][j] = _mm256_fmadd_ps(x1, y, acc[1][j]);
            }
            k += 8;
        }
        let mut sums = [[0f32; 4]; 2];
        for i in 0..2 {
            for j in 0..4 {
                let mut lanes = [0f32; 8];
                // SAFETY: `lanes` holds 8 values.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                let tail = (whole..dim).fold(0.0, |s, k| a[i][k].mul_add(b[j][k], s));
                sums[i][j] = lanes.iter().sum::<f32>() + tail;
            }
        }
        sums
    }
}

/// A dot product summed in `L` lanes, so that the compiler can use SIMD (a plain iterator sum is one
/// sequential chain of float additions, which it may not reorder). `fma(x, y, acc)` is `x * y + acc`, fused
/// or not. Inlined into each caller, so that it is compiled with the caller's target features.
#[inline(always)]
fn lanes_dot<const L: usize>(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; L];
    let (a8, b8) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .fold(0.0, |acc, (x, y)| fma(*x, *y, acc));
    for (x, y) in a8.zip(b8) {
        for k in 0..L {
            lanes[k] = fma(x[k], y[k], lanes[k]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `dot_products` in tiles of `TA` rows of `a` by `TB` rows of `b`: each step of `tile` loads `TA + TB`
/// chunks and does `TA * TB` multiply-adds with them, all in registers, so it is bound by the CPU's
/// multiply-adds rather than by loads. Rows are read where they lie (no copy into a packed matrix), and a tile of
/// `b` (a few rows) stays in the L1 cache while the rows of `a` stream past it. `edge` computes the pairs of the
/// ragged edge (fewer rows left than a tile), one dot product at a time. Both get rows cut to `dim`.
#[inline(always)]
fn tiled_dot_products<const TA: usize, const TB: usize>(
    a: &[&[f32]],
    b: &[&[f32]],
    dim: usize,
    out: &mut [f32],
    tile: impl Fn(&[&[f32]; TA], &[&[f32]; TB]) -> [[f32; TB]; TA],
    edge: impl Fn(&[f32], &[f32]) -> f32,
) {
    let nb = b.len();
    let a: Vec<&[f32]> = a.iter().map(|r| &r[..dim]).collect();
    let b: Vec<&[f32]> = b.iter().map(|r| &r[..dim]).collect();
    for (tb, b_rows) in b.chunks(TB).enumerate() {
        for (ta, a_rows) in a.chunks(TA).enumerate() {
            let at = |i: usize, j: usize| (ta * TA + i) * nb + tb * TB + j;
            match (
                <&[&[f32]; TA]>::try_from(a_rows),
                <&[&[f32]; TB]>::try_from(b_rows),
            ) {
                (Ok(a_rows), Ok(b_rows)) => {
                    for (i, row) in tile(a_rows, b_rows).iter().enumerate() {
                        for (j, &sum) in row.iter().enumerate() {
                            out[at(i, j)] = sum;
                        }
                    }
                }
                _ => {
                    for (i, x) in a_rows.iter().enumerate() {
                        for (j, y) in b_rows.iter().enumerate() {
                            out[at(i, j)] = edge(x, y);
                        }
                    }
                }
            }
        }
    }
}

/// One full tile in portable code (rows of one length), for CPUs without the wider kernels.
#[inline(always)]
fn portable_tile<const L: usize, const TA: usize, const TB: usize>(
    a: &[&[f32]; TA],
    b: &[&[f32]; TB],
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) -> [[f32; TB]; TA] {
    let mut sums = [[0f32; TB]; TA];
    for (i, x) in a.iter().enumerate() {
        let mut lanes = [[0f32; L]; TB];
        let whole = x.len() - x.len() % L;
        for start in (0..whole).step_by(L) {
            for (lanes, y) in lanes.iter_mut().zip(b) {
                for k in 0..L {
                    lanes[k] = fma(x[start + k], y[start + k], lanes[k]);
                }
            }
        }
        for (j, y) in b.iter().enumerate() {
            let tail = (whole..x.len()).fold(0.0, |s, k| fma(x[k], y[k], s));
            sums[i][j] = lanes[j].iter().sum::<f32>() + tail;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU can run: the baseline always, the wider ones when present.
    fn runnable() -> Vec<Simd> {
        Simd::WIDEST_FIRST
            .into_iter()
            .filter(|s| s.supported())
            .collect()
    }

    fn wave(n: usize, phase: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect()
    }

    fn exact(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    /// How far an f32 sum in any order may stray from the exact one: relative to the sum of magnitudes.
    fn tolerance(a: &[f32], b: &[f32]) -> f64 {
        1e-6 * (1.0
            + a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum::<f64>())
    }

    #[test]
    fn dot_matches_a_sequential_sum_at_every_length_around_the_lanes() {
        for simd in runnable() {
            for n in [0, 1, 7, 8, 9, 16, 17, 23, 64, 65, 130, 896] {
                let (a, b) = (wave(n, 0.0), wave(n, 1.3));
                let got = dot_with(simd, &a, &b) as f64;
                assert!(
                    (got - exact(&a, &b)).abs() < tolerance(&a, &b),
                    "{simd:?}, n = {n}"
                );
            }
            // The longer slice's extra elements are ignored.
            assert_eq!(
                dot_with(simd, &[1.0, 2.0, 3.0], &[1.0, 1.0]),
                3.0,
                "{simd:?}"
            );
        }
    }

    #[test]
    fn dot_products_match_sequential_sums_for_whole_and_ragged_tiles() {
        // Row counts that fill tiles exactly and leave every possible remainder; lengths around the lanes.
        for simd in runnable() {
            for (na, nb) in [(0, 3), (1, 1), (4, 4), (5, 7), (9, 13)] {
                for dim in [0, 3, 8, 16, 33, 896] {
                    let a: Vec<Vec<f32>> = (0..na).map(|i| wave(dim + i, i as f32)).collect();
                    let b: Vec<Vec<f32>> = (0..nb).map(|j| wave(dim, 10.0 + j as f32)).collect();
                    let a_rows: Vec<&[f32]> = a.iter().map(Vec::as_slice).collect();
                    let b_rows: Vec<&[f32]> = b.iter().map(Vec::as_slice).collect();
                    let got = dot_products_with(simd, &a_rows, &b_rows, dim);
                    assert_eq!(got.len(), na * nb);
                    for i in 0..na {
                        for j in 0..nb {
                            let want = exact(&a[i][..dim], &b[j]);
                            let got = got[i * nb + j] as f64;
                            assert!(
                                (got - want).abs() < tolerance(&a[i][..dim], &b[j]),
                                "{simd:?}, {na}x{nb}, dim {dim}, ({i}, {j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
