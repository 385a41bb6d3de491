/// The element type of a collective's buffer.
///
/// The raw value is the dtype's code on the wire (see docs/wire-format.md); new types get new codes and
/// never reuse one. `description` is the name nccl-tests prints in its `type` column.
public enum DataType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// IEEE-754 binary32 (`Float`).
    case float32 = 1

    /// Bytes per element.
    @inlinable
    public var size: Int {
        switch self {
        case .float32: return 4
        }
    }

    public var description: String {
        switch self {
        case .float32: return "float"
        }
    }
}

/// How a reduction combines the values of all ranks, element by element.
///
/// The raw value is the op's code on the wire.
public enum ReduceOp: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Element-wise sum.
    case sum = 1

    public var description: String {
        switch self {
        case .sum: return "sum"
        }
    }
}

/// Which collective a frame belongs to, so that ranks calling different collectives at the same point of
/// their sequence are told so instead of exchanging bytes that do not fit.
public enum CollectiveKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case allReduce = 1
    case barrier = 2

    public var description: String {
        switch self {
        case .allReduce: return "allReduce"
        case .barrier: return "barrier"
        }
    }
}
