// Single-precision matrix products for the MLP: C = A·B (forward), C += Aᵀ·B (weight gradient) and
// C = A·Bᵀ (input gradient). Every matrix is dense and row-major; every product can overwrite C or add to it.
//
// The algorithm (the GotoBLAS/BLIS scheme, reduced to two loops around one micro-kernel):
//
//          k ──────────►        n ──► jc (16 columns at a time)
//     m  ┌──────────────┐    ┌──┬──┬──┐            C tile (6 rows × 16 columns) lives in
//     │  │ A: 6 rows ══ │ ·  │B │  │  │ kc rows    12 AVX2 registers for the whole kc loop:
//     ▼  │   (a sliver) │    │pa│  │  │ (a block   for each p: one 16-float row of the packed
//        └──────────────┘    │ck│  │  │  of k)     B panel, 6 broadcasts of A, 6 vector multiply-adds.
//                            └──┴──┴──┘
//
// 1. Panel: for each block of 16 columns of C and each block of at most `kc` (256) values of k, copy the
//    kc × 16 slice of op(B) into a contiguous, zero-padded panel (16 KiB: it stays in L1). Packing makes
//    the three variants one kernel: for B (k × n) it copies rows, for Bᵀ (B is n × k) it transposes.
// 2. Micro-kernel: for each sliver of 6 rows of C, keep the 6 × 16 tile in registers (six SIMD16<Float>,
//    i.e. twelve 8-lane AVX2 registers, plus two for the panel row and one broadcast: 15 of 16), run over
//    the kc values of k, then add the tile to C (or store it, for the first k block of an overwrite).
//    The sliver of op(A) is read in place through two strides: A (m × k) has `rowStride = k,
//    kStride = 1`, Aᵀ (A is k × m) has `rowStride = 1, kStride = m`. Rows left over (m mod 6) go
//    through a one-row kernel; columns left over (n mod 16) are computed on zero padding and not stored.
//
// Per k step the micro-kernel loads 16 floats of B and 6 of A for 6·16 multiply-adds: compute-bound, not
// memory-bound. It uses a separate multiply and add, not FMA: Swift does not contract them, and
// `addingProduct` would become a library call per lane in a build without FMA. So the results are the same
// bits on every build (checked: x86-64 and x86-64-v3 builds train to the same checksum).
//
// Measured on one core of this project's 2-core Xeon (`GEMMTests.testMeasureThroughput`, run with
// CONCORD_ML_MEASURE=1 in a release build), on the demo MLP's shapes (m × n × k = 64×256×784, 784×256×64,
// 64×784×256, 256×256×784, 512×512×512): 34–50 GFLOP/s with `-Xcc -march=x86-64-v3` (AVX2), 12–20 GFLOP/s
// for a plain x86-64 (SSE2) release build. Debug builds are ~100× slower (generic SIMD code).
//
// Sums run over k in increasing order within a k block, blocks in order: the results depend only on the
// shapes and inputs, never on timing. No allocation: the panel is a stack buffer.

/// Dense single-precision matrix products on row-major storage, SIMD and register-blocked.
///
/// The three variants the forward and backward passes of a fully connected layer need. Shapes are given
/// as `m × n` for C and `k` for the shared dimension; C must not overlap A or B. Any dimension may be 0
/// (an empty product overwrites C with zeros, or leaves it unchanged when accumulating).
public enum GEMM {
    /// C (m × n) = A (m × k) · B (k × n), or C += A · B when `accumulate`.
    /// - Parameters:
    ///   - m: rows of A and C.
    ///   - n: columns of B and C.
    ///   - k: columns of A, rows of B.
    ///   - a: `m * k` floats, row-major.
    ///   - b: `k * n` floats, row-major.
    ///   - c: `m * n` floats, row-major; disjoint from `a` and `b`.
    ///   - accumulate: add the product to C instead of overwriting it.
    @inlinable
    public static func aTimesB(
        m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
        accumulate: Bool = false
    ) {
        product(
            m: m, n: n, k: k, a: a, aRowStride: k, aKStride: 1, b: b, bTransposed: false, c: c,
            accumulate: accumulate)
    }

    /// C (m × n) = Aᵀ · B with A (k × m) and B (k × n), or C += Aᵀ · B when `accumulate` (the weight
    /// gradient of a layer: inputᵀ · output gradient, k being the batch).
    /// - Parameters:
    ///   - m: columns of A, rows of C.
    ///   - n: columns of B and C.
    ///   - k: rows of A and B.
    ///   - a: `k * m` floats, row-major.
    ///   - b: `k * n` floats, row-major.
    ///   - c: `m * n` floats, row-major; disjoint from `a` and `b`.
    ///   - accumulate: add the product to C instead of overwriting it.
    @inlinable
    public static func aTransposedTimesB(
        m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
        accumulate: Bool = false
    ) {
        product(
            m: m, n: n, k: k, a: a, aRowStride: 1, aKStride: m, b: b, bTransposed: false, c: c,
            accumulate: accumulate)
    }

    /// C (m × n) = A · Bᵀ with A (m × k) and B (n × k), or C += A · Bᵀ when `accumulate` (the input
    /// gradient of a layer: output gradient · weightᵀ).
    /// - Parameters:
    ///   - m: rows of A and C.
    ///   - n: rows of B, columns of C.
    ///   - k: columns of A and B.
    ///   - a: `m * k` floats, row-major.
    ///   - b: `n * k` floats, row-major.
    ///   - c: `m * n` floats, row-major; disjoint from `a` and `b`.
    ///   - accumulate: add the product to C instead of overwriting it.
    @inlinable
    public static func aTimesBTransposed(
        m: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>, c: UnsafeMutablePointer<Float>,
        accumulate: Bool = false
    ) {
        product(
            m: m, n: n, k: k, a: a, aRowStride: k, aKStride: 1, b: b, bTransposed: true, c: c,
            accumulate: accumulate)
    }

    // MARK: - Blocking

    /// Columns of C per panel and per micro-kernel tile: one SIMD16<Float>.
    @inlinable static var panelWidth: Int { 16 }
    /// Rows of C per micro-kernel tile.
    @inlinable static var tileRows: Int { 6 }
    /// Values of k per panel: a 256 × 16 panel is 16 KiB, a 6 × 256 sliver of A 6 KiB; both stay in L1.
    @inlinable static var kBlock: Int { 256 }

    /// The shared driver: op(A) read through strides, op(B) packed panel by panel.
    @inlinable
    static func product(
        m: Int, n: Int, k: Int, a: UnsafePointer<Float>, aRowStride: Int, aKStride: Int, b: UnsafePointer<Float>,
        bTransposed: Bool, c: UnsafeMutablePointer<Float>, accumulate: Bool
    ) {
        precondition(m >= 0 && n >= 0 && k >= 0, "GEMM: negative dimension m=\(m) n=\(n) k=\(k)")
        if m == 0 || n == 0 { return }
        if k == 0 {
            if !accumulate { c.update(repeating: 0, count: m * n) }
            return
        }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: kBlock * panelWidth) { panelBuffer in
            let panel = panelBuffer.baseAddress!
            var jc = 0
            while jc < n {
                let width = min(panelWidth, n - jc)
                var pc = 0
                while pc < k {
                    let depth = min(kBlock, k - pc)
                    if bTransposed {
                        packTransposed(b + jc * k + pc, ldb: k, depth: depth, width: width, into: panel)
                    } else {
                        pack(b + pc * n + jc, ldb: n, depth: depth, width: width, into: panel)
                    }
                    let add = accumulate || pc > 0
                    let aBlock = a + pc * aKStride
                    var ic = 0
                    while ic + tileRows <= m {
                        kernel6(
                            a: aBlock + ic * aRowStride, rowStride: aRowStride, kStride: aKStride, panel: panel,
                            depth: depth, c: c + ic * n + jc, ldc: n, width: width, add: add)
                        ic += tileRows
                    }
                    while ic < m {
                        kernel1(
                            a: aBlock + ic * aRowStride, kStride: aKStride, panel: panel, depth: depth,
                            c: c + ic * n + jc, width: width, add: add)
                        ic += 1
                    }
                    pc += depth
                }
                jc += width
            }
        }
    }

    /// Copies `depth` rows of `width` ≤ 16 columns of a row-major matrix into `panel` (depth × 16),
    /// zero-padding the missing columns.
    @inlinable @inline(__always)
    static func pack(
        _ b: UnsafePointer<Float>, ldb: Int, depth: Int, width: Int, into panel: UnsafeMutablePointer<Float>
    ) {
        if width == panelWidth {
            for p in 0..<depth {
                let row = UnsafeRawPointer(b + p * ldb).loadUnaligned(as: SIMD16<Float>.self)
                UnsafeMutableRawPointer(panel + p * panelWidth).storeBytes(of: row, as: SIMD16<Float>.self)
            }
        } else {
            for p in 0..<depth {
                let destination = panel + p * panelWidth
                for j in 0..<width { destination[j] = b[p * ldb + j] }
                for j in width..<panelWidth { destination[j] = 0 }
            }
        }
    }

    /// Packs the transpose: `panel[p][j] = b[j][p]` for `width` ≤ 16 rows of B (each `ldb` long) and
    /// `depth` columns, zero-padding the missing rows.
    @inlinable @inline(__always)
    static func packTransposed(
        _ b: UnsafePointer<Float>, ldb: Int, depth: Int, width: Int, into panel: UnsafeMutablePointer<Float>
    ) {
        for j in 0..<width {
            let row = b + j * ldb
            for p in 0..<depth { panel[p * panelWidth + j] = row[p] }
        }
        if width < panelWidth {
            for p in 0..<depth {
                for j in width..<panelWidth { panel[p * panelWidth + j] = 0 }
            }
        }
    }

    /// The 6 × 16 micro-kernel: C[0..<6][0..<width] (+)= Σₚ A[r][p] · panel[p].
    @inlinable @inline(__always)
    static func kernel6(
        a: UnsafePointer<Float>, rowStride: Int, kStride: Int, panel: UnsafePointer<Float>, depth: Int,
        c: UnsafeMutablePointer<Float>, ldc: Int, width: Int, add: Bool
    ) {
        var c0 = SIMD16<Float>()
        var c1 = SIMD16<Float>()
        var c2 = SIMD16<Float>()
        var c3 = SIMD16<Float>()
        var c4 = SIMD16<Float>()
        var c5 = SIMD16<Float>()
        var ap = a
        var bp = panel
        for _ in 0..<depth {
            let bv = UnsafeRawPointer(bp).loadUnaligned(as: SIMD16<Float>.self)
            c0 += SIMD16(repeating: ap[0]) * bv
            c1 += SIMD16(repeating: ap[rowStride]) * bv
            c2 += SIMD16(repeating: ap[2 * rowStride]) * bv
            c3 += SIMD16(repeating: ap[3 * rowStride]) * bv
            c4 += SIMD16(repeating: ap[4 * rowStride]) * bv
            c5 += SIMD16(repeating: ap[5 * rowStride]) * bv
            ap += kStride
            bp += panelWidth
        }
        store(c0, to: c, width: width, add: add)
        store(c1, to: c + ldc, width: width, add: add)
        store(c2, to: c + 2 * ldc, width: width, add: add)
        store(c3, to: c + 3 * ldc, width: width, add: add)
        store(c4, to: c + 4 * ldc, width: width, add: add)
        store(c5, to: c + 5 * ldc, width: width, add: add)
    }

    /// The one-row micro-kernel for the rows left after the 6-row tiles.
    @inlinable @inline(__always)
    static func kernel1(
        a: UnsafePointer<Float>, kStride: Int, panel: UnsafePointer<Float>, depth: Int,
        c: UnsafeMutablePointer<Float>, width: Int, add: Bool
    ) {
        var c0 = SIMD16<Float>()
        var ap = a
        var bp = panel
        for _ in 0..<depth {
            c0 += SIMD16(repeating: ap[0]) * UnsafeRawPointer(bp).loadUnaligned(as: SIMD16<Float>.self)
            ap += kStride
            bp += panelWidth
        }
        store(c0, to: c, width: width, add: add)
    }

    /// Writes (or adds) the first `width` lanes of a tile row to C.
    @inlinable @inline(__always)
    static func store(_ v: SIMD16<Float>, to c: UnsafeMutablePointer<Float>, width: Int, add: Bool) {
        if width == panelWidth {
            let raw = UnsafeMutableRawPointer(c)
            let result = add ? raw.loadUnaligned(as: SIMD16<Float>.self) + v : v
            raw.storeBytes(of: result, as: SIMD16<Float>.self)
        } else if add {
            for j in 0..<width { c[j] += v[j] }
        } else {
            for j in 0..<width { c[j] = v[j] }
        }
    }
}
