// The CPU guard's decision, fed with the cpuid words of CPUs we cannot run on: which features count as
// usable (CPU bit and OS register state), the one-line message, and the name parsing of the testing aid.
// The constructor itself runs before every test binary's main; that it lets this one run is checked too.
import CConcordCPU
import ConcordKernels
import Testing

/// A feature mask from names.
func mask(_ features: [concord_cpu_feature]) -> UInt64 {
    features.reduce(0) { $0 | (1 << UInt64($1.rawValue)) }
}

let levelV2: [concord_cpu_feature] = [
    CONCORD_CPU_SSE3, CONCORD_CPU_SSSE3, CONCORD_CPU_SSE4_1, CONCORD_CPU_SSE4_2, CONCORD_CPU_POPCNT, CONCORD_CPU_CX16,
    CONCORD_CPU_LAHF_SAHF,
]
let levelV3 =
    levelV2 + [
        CONCORD_CPU_XSAVE, CONCORD_CPU_MOVBE, CONCORD_CPU_BMI, CONCORD_CPU_BMI2, CONCORD_CPU_LZCNT, CONCORD_CPU_AVX,
        CONCORD_CPU_AVX2, CONCORD_CPU_FMA, CONCORD_CPU_F16C,
    ]

/// cpuid words of a Haswell-class CPU (x86-64-v3), the OS saving `xcr0`.
func haswell(xcr0: UInt64 = 0x7) -> concord_cpu_id {
    var id = concord_cpu_id()
    // SSE3 0, PCLMUL 1, SSSE3 9, FMA 12, CX16 13, SSE4.1 19, SSE4.2 20, MOVBE 22, POPCNT 23, AES 25,
    // XSAVE 26, OSXSAVE 27, AVX 28, F16C 29, RDRND 30
    id.leaf1_ecx = [0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 27, 28, 29, 30].reduce(0) { $0 | (1 << $1) }
    id.leaf7_ebx = [3, 5, 8].reduce(0) { $0 | (1 << $1) }  // BMI1, AVX2, BMI2
    id.ext1_ecx = (1 << 0) | (1 << 5)  // LAHF, LZCNT
    id.xcr0 = xcr0
    return id
}

/// cpuid words of a Sandy Bridge-class CPU: AVX but no AVX2, FMA, F16C, BMI, LZCNT, MOVBE.
func sandyBridge() -> concord_cpu_id {
    var id = concord_cpu_id()
    id.leaf1_ecx = [0, 1, 9, 13, 19, 20, 23, 25, 26, 27, 28].reduce(0) { $0 | (1 << $1) }
    id.ext1_ecx = 1 << 0
    id.xcr0 = 0x7
    return id
}

@Suite("CPU guard")
struct CPUGuardTests {
    @Test("an x86-64-v3 CPU with the OS saving YMM state runs an x86-64-v3 build")
    func haswellRunsV3() {
        var id = haswell()
        #expect(mask(levelV3) & ~concord_cpu_usable(&id) == 0)
    }

    @Test("without AVX2, FMA, F16C, BMI, LZCNT and MOVBE the guard names exactly those")
    func sandyBridgeLacksV3() {
        var id = sandyBridge()
        let missing = mask(levelV3) & ~concord_cpu_usable(&id)
        #expect(CPUFeatures.names(missing) == ["movbe", "bmi1", "bmi2", "lzcnt", "avx2", "fma", "f16c"])
    }

    @Test("AVX counts only when the OS saves the YMM registers (OSXSAVE and XCR0)")
    func osState() {
        var noYMM = haswell(xcr0: 0x3)
        #expect(CPUFeatures.names(mask(levelV3) & ~concord_cpu_usable(&noYMM)) == ["avx", "avx2", "fma", "f16c"])
        var noOSXSAVE = haswell()
        noOSXSAVE.leaf1_ecx &= ~(1 << 27)
        #expect(concord_cpu_usable(&noOSXSAVE) & mask([CONCORD_CPU_AVX]) == 0)
    }

    @Test("AVX-512 counts only when the OS saves the ZMM state")
    func avx512State() {
        var id = haswell(xcr0: 0xE7)
        id.leaf7_ebx |= (1 << 16) | (1 << 17) | (1 << 30) | (1 << 31)  // F, DQ, BW, VL
        id.leaf7_1_eax = 1 << 5  // BF16
        let avx512 = mask([
            CONCORD_CPU_AVX512F, CONCORD_CPU_AVX512DQ, CONCORD_CPU_AVX512BW, CONCORD_CPU_AVX512VL,
            CONCORD_CPU_AVX512BF16,
        ])
        #expect(concord_cpu_usable(&id) & avx512 == avx512)
        id.xcr0 = 0x7
        #expect(concord_cpu_usable(&id) & avx512 == 0)
        #expect(concord_cpu_usable(&id) & mask([CONCORD_CPU_AVX2]) != 0)
    }

    @Test("nothing is usable on a CPU that reports nothing; a baseline build needs nothing")
    func empty() {
        var id = concord_cpu_id()
        #expect(concord_cpu_usable(&id) == 0)
    }

    @Test("the message is one line naming the missing features and how to rebuild")
    func message() {
        var buffer = [CChar](repeating: 0, count: 640)
        let length = concord_cpu_format_error(mask([CONCORD_CPU_AVX2, CONCORD_CPU_FMA]), &buffer, buffer.count)
        let text = String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        #expect(
            text
                == "concord: this binary was built for a newer CPU; this one lacks: avx2 fma. Rebuild for this machine with `make build ARCH=x86-64` (portable) or `make build ARCH=native`.\n"
        )
        #expect(buffer[length] == 0)
        var small = [CChar](repeating: 1, count: 20)
        let cut = concord_cpu_format_error(mask([CONCORD_CPU_AVX2]), &small, small.count)
        #expect(cut == 19 && small[18] == 0x0A && small[19] == 0, "a truncated message still ends the line")
    }

    @Test("feature names parse from the testing aid's list; unknown names are ignored")
    func parseNames() {
        #expect(concord_cpu_parse_names("avx2,fma") == mask([CONCORD_CPU_AVX2, CONCORD_CPU_FMA]))
        #expect(
            concord_cpu_parse_names(" f16c  avx512bf16,,bogus ") == mask([CONCORD_CPU_F16C, CONCORD_CPU_AVX512BF16]))
        #expect(concord_cpu_parse_names("") == 0)
        #expect(concord_cpu_parse_names(nil) == 0)
        #expect(concord_cpu_parse_names("avx") == mask([CONCORD_CPU_AVX]), "a prefix of a name is not a match")
    }

    @Test("every feature has a distinct name")
    func names() {
        let all = (0..<UInt32(CONCORD_CPU_FEATURE_COUNT.rawValue)).compactMap {
            concord_cpu_feature_name($0).map { String(cString: $0) }
        }
        #expect(all.count == Int(CONCORD_CPU_FEATURE_COUNT.rawValue) && Set(all).count == all.count)
        #expect(concord_cpu_feature_name(UInt32(CONCORD_CPU_FEATURE_COUNT.rawValue)) == nil)
    }

    @Test("this machine has what this build requires (the guard let the test binary start)")
    func thisMachine() {
        var id = concord_cpu_read()
        #expect(concord_cpu_required() & ~concord_cpu_usable(&id) == 0)
        #expect(CPUFeatures.missing.isEmpty)
        #expect(Set(CPUFeatures.required).isSubset(of: CPUFeatures.names(concord_cpu_usable(&id))))
    }
}
