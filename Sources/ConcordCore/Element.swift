/// A Swift type that Concord collectives carry, and its `DataType`.
public protocol ConcordElement: Sendable {
    static var dataType: DataType { get }
}

extension Float: ConcordElement { public static var dataType: DataType { .float32 } }
extension Double: ConcordElement { public static var dataType: DataType { .float64 } }
extension Float16: ConcordElement { public static var dataType: DataType { .float16 } }
extension BFloat16: ConcordElement { public static var dataType: DataType { .bfloat16 } }
extension Int8: ConcordElement { public static var dataType: DataType { .int8 } }
extension UInt8: ConcordElement { public static var dataType: DataType { .uint8 } }
extension Int32: ConcordElement { public static var dataType: DataType { .int32 } }
extension Int64: ConcordElement { public static var dataType: DataType { .int64 } }
