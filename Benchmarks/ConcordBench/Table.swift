// The nccl-tests table: the columns users already read, right-aligned, with '#' comment lines.
import Foundation

struct BenchRow: Codable {
    var collective: String
    var ranks: Int
    var bytes: Int
    var count: Int
    var type: String
    var redop: String
    /// The root rank of broadcast and reduce, -1 for the others (as nccl-tests prints it).
    var root: Int
    var timeMicroseconds: Double
    /// CPU time (user + system, every thread) of one call, the average over ranks.
    var cpuMicroseconds: Double?
    /// The largest resident set of any rank so far (bytes), read after the row.
    var peakResidentBytes: Int?
    var algbw: Double
    var busbw: Double
    var wrong: Int?
    /// The raw TCP ring's per-link GB/s for the same bytes per link, when measured in the same run.
    var rawBusbw: Double?
    /// The same with buffers as large as the tensor (`--raw-ring-cold`).
    var rawColdBusbw: Double?
}

/// The baselines a table can show beside Concord's busbw, each with the ratio busbw / baseline.
enum Baseline: CaseIterable {
    case raw, rawCold

    var title: String { self == .raw ? "raw ring" : "raw cold" }

    func value(_ row: BenchRow) -> Double? { self == .raw ? row.rawBusbw : row.rawColdBusbw }
}

struct Table {
    let baselines: [Baseline]

    var header: String {
        var top =
            "#" + pad("size", 11) + pad("count", 14) + pad("type", 10) + pad("redop", 8) + pad("root", 6)
            + pad("time", 11) + pad("cpu", 9) + pad("algbw", 9) + pad("busbw", 9) + pad("#wrong", 8)
        var units =
            "#" + pad("(B)", 11) + pad("(elements)", 14) + pad("", 10) + pad("", 8) + pad("", 6)
            + pad("(us)", 11) + pad("(us)", 9) + pad("(GB/s)", 9) + pad("(GB/s)", 9) + pad("", 8)
        for baseline in baselines {
            top += pad(baseline.title, 10) + pad("ratio", 7)
            units += pad("(GB/s)", 10) + pad("", 7)
        }
        return top + "\n" + units
    }

    func line(_ row: BenchRow) -> String {
        var text =
            " " + pad("\(row.bytes)", 11) + pad("\(row.count)", 14) + pad(row.type, 10) + pad(row.redop, 8)
            + pad("\(row.root)", 6)
            + pad(fixed(row.timeMicroseconds, row.timeMicroseconds < 1e4 ? 1 : 0), 11)
            + pad(row.cpuMicroseconds.map { fixed($0, $0 < 1e4 ? 1 : 0) } ?? "-", 9)
            + pad(fixed(row.algbw, 2), 9) + pad(fixed(row.busbw, 2), 9)
            + pad(row.wrong.map(String.init) ?? "N/A", 8)
        for baseline in baselines {
            let raw = baseline.value(row) ?? 0
            text += pad(fixed(raw, 2), 10) + pad(raw > 0 ? fixed(row.busbw / raw, 2) : "-", 7)
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
