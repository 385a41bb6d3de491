// The nccl-tests table: the columns users already read, right-aligned, with '#' comment lines.
import Foundation

struct BenchRow: Codable {
    var collective: String
    var ranks: Int
    var bytes: Int
    var count: Int
    var type: String
    var redop: String
    var timeMicroseconds: Double
    var algbw: Double
    var busbw: Double
    var wrong: Int?
    /// The raw TCP ring's per-link GB/s for the same bytes per link, when measured in the same run.
    var rawBusbw: Double?
}

struct Table {
    let withRaw: Bool

    var header: String {
        var top =
            "#" + pad("size", 11) + pad("count", 14) + pad("type", 10) + pad("redop", 8)
            + pad("time", 11) + pad("algbw", 9) + pad("busbw", 9) + pad("#wrong", 8)
        var units =
            "#" + pad("(B)", 11) + pad("(elements)", 14) + pad("", 10) + pad("", 8)
            + pad("(us)", 11) + pad("(GB/s)", 9) + pad("(GB/s)", 9) + pad("", 8)
        if withRaw {
            top += pad("raw ring", 10) + pad("ratio", 8)
            units += pad("(GB/s)", 10) + pad("", 8)
        }
        return top + "\n" + units
    }

    func line(_ row: BenchRow) -> String {
        var text =
            " " + pad("\(row.bytes)", 11) + pad("\(row.count)", 14) + pad(row.type, 10) + pad(row.redop, 8)
            + pad(fixed(row.timeMicroseconds, row.timeMicroseconds < 1e4 ? 1 : 0), 11)
            + pad(fixed(row.algbw, 2), 9) + pad(fixed(row.busbw, 2), 9)
            + pad(row.wrong.map(String.init) ?? "N/A", 8)
        if withRaw, let raw = row.rawBusbw {
            text += pad(fixed(raw, 2), 10) + pad(raw > 0 ? fixed(row.busbw / raw, 2) : "-", 8)
        }
        return text
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? " " + s : String(repeating: " ", count: width - s.count) + s
    }

    private func fixed(_ value: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", value) }
}

/// Writes rows as a JSON array.
func writeJSON(_ rows: [BenchRow], to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(rows).write(to: URL(fileURLWithPath: path))
}
