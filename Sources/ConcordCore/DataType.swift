/// The element type of a collective's buffer.
///
/// The raw value is the dtype's code on the wire (see docs/wire-format.md); new types get new codes and
/// never reuse one. `description` is the name nccl-tests prints in its `type` column (and `-d` accepts).
public enum DataType: UInt8, Sendable, NamedCases {
    /// IEEE-754 binary32 (`Float`).
    case float32 = 1
    /// IEEE-754 binary64 (`Double`).
    case float64 = 2
    /// IEEE-754 binary16 (`Float16`); reduced by widening to float32 and rounding once per hop.
    case float16 = 3
    /// bfloat16 (`BFloat16`): the top half of a float32; reduced like float16.
    case bfloat16 = 4
    case int8 = 5
    case uint8 = 6
    case int32 = 7
    case int64 = 8

    /// Bytes per element.
    @inlinable
    public var size: Int {
        switch self {
        case .int8, .uint8: return 1
        case .float16, .bfloat16: return 2
        case .float32, .int32: return 4
        case .float64, .int64: return 8
        }
    }

    /// Whether the type is a floating-point type (`avg` is defined only for these).
    @inlinable
    public var isFloatingPoint: Bool {
        switch self {
        case .float32, .float64, .float16, .bfloat16: return true
        case .int8, .uint8, .int32, .int64: return false
        }
    }

    public var description: String {
        switch self {
        case .float32: return "float"
        case .float64: return "double"
        case .float16: return "half"
        case .bfloat16: return "bfloat16"
        case .int8: return "int8"
        case .uint8: return "uint8"
        case .int32: return "int32"
        case .int64: return "int64"
        }
    }

}

/// How a reduction combines the values of all ranks, element by element.
///
/// The raw value is the op's code on the wire. Integer `sum` and `prod` wrap around (two's complement);
/// `avg` is `sum` then a multiplication by 1/worldSize, defined for floating-point types only.
public enum ReduceOp: UInt8, Sendable, NamedCases {
    case sum = 1
    case prod = 2
    case min = 3
    case max = 4
    /// The mean over ranks: a sum, scaled once by 1/worldSize by the rank that owns each reduced chunk.
    case avg = 5

    public var description: String {
        switch self {
        case .sum: return "sum"
        case .prod: return "prod"
        case .min: return "min"
        case .max: return "max"
        case .avg: return "avg"
        }
    }

    /// Whether `self` is defined on `dataType`.
    public func isSupported(on dataType: DataType) -> Bool {
        self != .avg || dataType.isFloatingPoint
    }

    /// The op the ring combines with: `avg` travels as a `sum` and is scaled at the end.
    public var combining: ReduceOp { self == .avg ? .sum : self }
}

/// Which collective a frame belongs to, so that ranks calling different collectives at the same point of
/// their sequence are told so instead of exchanging bytes that do not fit.
public enum CollectiveKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case allReduce = 1
    case barrier = 2
    case reduceScatter = 3
    case allGather = 4
    case broadcast = 5
    case reduce = 6
    /// The all-reduce whose links carry compressed float32 (`RingCollectives.compressedAllReduce`): its
    /// frames' dtype is the link's codec, not the buffer's.
    case compressedAllReduce = 7
    /// The link probe (`RingCollectives.probeLink`): each rank times zero-filled uint8 frames from its left.
    case linkProbe = 8

    public var description: String {
        switch self {
        case .allReduce: return "allReduce"
        case .barrier: return "barrier"
        case .reduceScatter: return "reduceScatter"
        case .allGather: return "allGather"
        case .broadcast: return "broadcast"
        case .reduce: return "reduce"
        case .compressedAllReduce: return "compressedAllReduce"
        case .linkProbe: return "linkProbe"
        }
    }
}

/// An enum whose cases are known by their `description` (nccl-tests' spelling, as `-d` and `-o` take it).
public protocol NamedCases: CaseIterable, CustomStringConvertible {}

extension NamedCases {
    /// The case whose description is `name` (`float`, `half`, `sum`, `avg`, ...), or nil.
    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = match
    }
}
