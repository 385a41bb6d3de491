import ConcordCore
import ConcordKernels
import Testing

@Suite("Reduce kernels")
struct ReduceKernelTests {
    @Test("float32 sum matches the scalar reference at every length and offset")
    func floatSum() {
        for length in [0, 1, 15, 16, 17, 31, 33, 1000] {
            for offset in [0, 1, 3] {
                var destination = (0..<(length + offset)).map { Float($0) * 0.5 }
                let source = (0..<(length + offset)).map { Float($0 % 7) - 3 }
                let expected = (0..<length).map { destination[$0 + offset] + source[$0 + offset] }
                destination.withUnsafeMutableBufferPointer { d in
                    source.withUnsafeBufferPointer { s in
                        ReduceKernels.reducer(op: .sum, dataType: .float32).combine(
                            UnsafeMutableRawPointer(d.baseAddress! + offset), UnsafeRawPointer(s.baseAddress! + offset),
                            length)
                    }
                }
                #expect(Array(destination[offset...]) == expected, "length \(length) offset \(offset)")
            }
        }
    }
}
