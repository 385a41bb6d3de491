// Every op × dtype of the reduce kernels against the scalar reference of ConcordTestSupport
// (`TestElement.combine`, which states the intended semantics element by element), on every kernel path
// this machine can run, at every loop boundary, at unaligned byte offsets, in place, and for `scale`.
import ConcordCore
import ConcordKernels
import ConcordTestSupport
import Testing

/// The kernel paths this CPU can run (portable always; AVX-512 BF16 where present).
let availablePaths = KernelPath.allCases.filter(\.isAvailable)

@Suite("Reduce kernels")
struct ReduceKernelTests {
    @Test("every op × dtype matches the scalar reference at every length and byte offset", arguments: DataType.allCases)
    func matchesReference(dataType: DataType) {
        for path in availablePaths {
            for op in ReduceOp.allCases where op.isSupported(on: dataType) {
                switch dataType {
                case .float32: check(Float.self, op, path)
                case .float64: check(Double.self, op, path)
                case .float16: check(Float16.self, op, path)
                case .bfloat16: check(BFloat16.self, op, path)
                case .int8: check(Int8.self, op, path)
                case .uint8: check(UInt8.self, op, path)
                case .int32: check(Int32.self, op, path)
                case .int64: check(Int64.self, op, path)
                }
            }
        }
    }

    @Test("destination and source may be the same memory", arguments: DataType.allCases)
    func inPlace(dataType: DataType) {
        for path in availablePaths {
            for op in ReduceOp.allCases where op.isSupported(on: dataType) {
                switch dataType {
                case .float32: checkAliased(Float.self, op, path)
                case .float64: checkAliased(Double.self, op, path)
                case .float16: checkAliased(Float16.self, op, path)
                case .bfloat16: checkAliased(BFloat16.self, op, path)
                case .int8: checkAliased(Int8.self, op, path)
                case .uint8: checkAliased(UInt8.self, op, path)
                case .int32: checkAliased(Int32.self, op, path)
                case .int64: checkAliased(Int64.self, op, path)
                }
            }
        }
    }

    @Test(
        "scale multiplies like the reference (avg's last step)",
        arguments: [DataType.float32, .float64, .float16, .bfloat16])
    func scale(dataType: DataType) {
        for path in availablePaths {
            for factor in [0.25, 1.0 / 3, 1.0 / 7, 3.0] {
                switch dataType {
                case .float32: checkScale(Float.self, factor, path)
                case .float64: checkScale(Double.self, factor, path)
                case .float16: checkScale(Float16.self, factor, path)
                case .bfloat16: checkScale(BFloat16.self, factor, path)
                default: Issue.record("scale is only for floating-point types")
                }
            }
        }
    }

    @Test("every pair of special values (±0, ±∞, NaN, subnormals, extremes) combines like the reference")
    func specialPairs() {
        for path in availablePaths {
            for op in ReduceOp.allCases {
                checkPairs(Float.self, Float.kernelTestSpecials + [1, -1.5, 0x1p-130, -0x1p-140], op, path)
                checkPairs(
                    Double.self,
                    [
                        .nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -1e-310, 1, -2.5,
                        .greatestFiniteMagnitude,
                    ], op, path)
                checkPairs(
                    Float16.self,
                    [
                        .nan, .infinity, -.infinity, 0, -0.0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                        Float16(bitPattern: 0x0155), .greatestFiniteMagnitude, 60000, -1, 1.5,
                    ],
                    op, path)
                checkPairs(
                    BFloat16.self,
                    [
                        0x7FC0, 0xFFC1, 0x7F81, 0x7F80, 0xFF80, 0, 0x8000, 0x0001, 0x8003, 0x0040, 0x807F, 0x0080,
                        0x7F7F, 0x3F80, 0xBFC0,
                    ].map(BFloat16.init(bitPattern:)),
                    op, path)
            }
        }
    }

    @Test("integer sums and products wrap around")
    func integersWrap() {
        var a: [Int8] = [127, -128, 100, 16]
        let b: [Int8] = [1, -1, 100, 16]
        a.withUnsafeMutableBytes { d in
            b.withUnsafeBytes { s in
                ReduceKernels.reducer(op: .sum, dataType: .int8).combine(d.baseAddress!, s.baseAddress!, 4)
            }
        }
        #expect(a == [-128, 127, -56, 32])
        var p: [Int32] = [1 << 30, -3]
        let q: [Int32] = [4, Int32.max]
        p.withUnsafeMutableBytes { d in
            q.withUnsafeBytes { s in
                ReduceKernels.reducer(op: .prod, dataType: .int32).combine(d.baseAddress!, s.baseAddress!, 2)
            }
        }
        #expect(p == [0, Int32.max &* -3])
    }

    @Test("min and max are Swift.min(d, s) and Swift.max(d, s): NaN and signed zeros depend on the order")
    func minMaxOrder() {
        func run(_ op: ReduceOp, _ d: [Float], _ s: [Float]) -> [Float] {
            var d = d + [Float](repeating: 1, count: 16)  // the vector loop, then the scalar tail
            let s = s + [Float](repeating: 1, count: 16)
            d.withUnsafeMutableBytes { d in
                s.withUnsafeBytes { s in
                    ReduceKernels.reducer(op: op, dataType: .float32).combine(
                        d.baseAddress!, s.baseAddress!, d.count / 4)
                }
            }
            return d
        }
        let d: [Float] = [.nan, 1, 0, -0.0]
        let s: [Float] = [1, .nan, -0.0, 0]
        for result in [run(.min, d, s), Array(run(.min, d + d + d + d, s + s + s + s).suffix(20))] {
            #expect(result[0].isNaN && result[1] == 1, "a NaN in the destination stays, one from the source is dropped")
            #expect(result[2].sign == .plus && result[3].sign == .minus, "min(+0, -0) = +0, min(-0, +0) = -0")
        }
        let max = run(.max, d + d + d + d, s + s + s + s)
        for i in [0, 4, 8, 12, 16] where i < 16 {
            #expect(max[i].isNaN && max[i + 1] == 1)
            #expect(max[i + 2].sign == .minus && max[i + 3].sign == .plus, "max(+0, -0) = -0, max(-0, +0) = +0")
        }
    }

    @Test(
        "the portable and AVX-512 BF16 paths give the same bits on every op",
        .enabled(if: KernelPath.avx512BF16.isAvailable))
    func pathsAgree() {
        let count = 20_011
        let a = samples(BFloat16.self, count: count, seed: 7)
        let b = samples(BFloat16.self, count: count, seed: 8)
        for op in ReduceOp.allCases {
            var results: [[UInt16]] = []
            for path in [KernelPath.portable, .avx512BF16] {
                var d = a
                d.withUnsafeMutableBytes { d in
                    b.withUnsafeBytes { s in
                        ReduceKernels.reducer(op: op, dataType: .bfloat16, path: path).combine(
                            d.baseAddress!, s.baseAddress!, count)
                    }
                }
                results.append(d.map(\.bitPattern))
            }
            #expect(results[0] == results[1], "\(op)")
        }
    }

    // MARK: - Helpers

    /// `op` on `T` through the reducer of `path`, at every length and offset, against `T.combine`.
    func check<T: KernelTestElement>(_: T.Type, _ op: ReduceOp, _ path: KernelPath) {
        let reducer = ReduceKernels.reducer(op: op, dataType: T.dataType, path: path)
        #expect(reducer.elementSize == MemoryLayout<T>.stride)
        let size = MemoryLayout<T>.stride
        for length in kernelLengths {
            let a = samples(T.self, count: length, seed: UInt64(length) &* 31 &+ UInt64(op.rawValue))
            let b = samples(T.self, count: length, seed: UInt64(length) &* 37 &+ 1000)
            let expected = zip(a, b).map { T.combine($0, $1, op) }
            for (dOffset, sOffset) in zip(kernelOffsets, kernelOffsets.reversed()) {
                let d = OffsetBuffer(bytes: length * size, offset: dOffset)
                let s = OffsetBuffer(bytes: length * size, offset: sOffset)
                defer {
                    d.deallocate()
                    s.deallocate()
                }
                d.write(a)
                s.write(b)
                reducer.combine(d.start, UnsafeRawPointer(s.start), length)
                let got = d.read(T.self, count: length)
                let wrong = (0..<length).filter { !got[$0].matches(expected[$0]) }
                #expect(
                    wrong.isEmpty,
                    "\(T.dataType) \(op) [\(path)] length \(length) offsets \(dOffset)/\(sOffset): first wrong index \(wrong.first.map(String.init) ?? "-"), \(wrong.first.map { "\(a[$0]) op \(b[$0]) = \(got[$0]), expected \(expected[$0])" } ?? "")"
                )
                #expect(d.guardsIntact(length: length * size), "\(T.dataType) \(op) wrote outside its buffer")
                #expect(s.read(T.self, count: length).elementsEqual(b) { $0.matches($1) }, "source modified")
            }
        }
    }

    /// Every ordered pair of `values` in one call (long enough for the vector loop and a tail).
    func checkPairs<T: KernelTestElement>(_: T.Type, _ values: [T], _ op: ReduceOp, _ path: KernelPath) {
        let a = values.flatMap { x in values.map { _ in x } }
        let b = values.flatMap { _ in values }
        let d = OffsetBuffer(bytes: a.count * MemoryLayout<T>.stride, offset: 1)
        defer { d.deallocate() }
        d.write(a)
        b.withUnsafeBytes { s in
            ReduceKernels.reducer(op: op, dataType: T.dataType, path: path).combine(d.start, s.baseAddress!, a.count)
        }
        let got = d.read(T.self, count: a.count)
        for i in a.indices where !got[i].matches(T.combine(a[i], b[i], op)) {
            Issue.record(
                "\(T.dataType) \(op) [\(path)]: \(a[i]) op \(b[i]) = \(got[i]), expected \(T.combine(a[i], b[i], op))")
        }
    }

    /// `x op x` with destination == source.
    func checkAliased<T: KernelTestElement>(_: T.Type, _ op: ReduceOp, _ path: KernelPath) {
        let reducer = ReduceKernels.reducer(op: op, dataType: T.dataType, path: path)
        for length in [1, 17, 65, 4099] {
            let a = samples(T.self, count: length, seed: UInt64(length) &+ 99)
            let buffer = OffsetBuffer(bytes: length * MemoryLayout<T>.stride, offset: 3)
            defer { buffer.deallocate() }
            buffer.write(a)
            reducer.combine(buffer.start, UnsafeRawPointer(buffer.start), length)
            let got = buffer.read(T.self, count: length)
            let wrong = (0..<length).filter { !got[$0].matches(T.combine(a[$0], a[$0], op)) }
            #expect(
                wrong.isEmpty, "\(T.dataType) \(op) [\(path)] in place, length \(length): wrong at \(wrong.prefix(5))")
        }
    }

    func checkScale<T: KernelTestElement>(_: T.Type, _ factor: Double, _ path: KernelPath) {
        for length in kernelLengths {
            let a = samples(T.self, count: length, seed: UInt64(length) &+ 5)
            let buffer = OffsetBuffer(bytes: length * MemoryLayout<T>.stride, offset: 1)
            defer { buffer.deallocate() }
            buffer.write(a)
            ReduceKernels.scale(buffer.start, count: length, dataType: T.dataType, by: factor, path: path)
            let got = buffer.read(T.self, count: length)
            let wrong = (0..<length).filter { !got[$0].matches(a[$0].scaled(by: factor)) }
            #expect(
                wrong.isEmpty,
                "\(T.dataType) scale by \(factor) [\(path)] length \(length): wrong at \(wrong.prefix(5))")
            #expect(buffer.guardsIntact(length: length * MemoryLayout<T>.stride))
        }
    }
}
