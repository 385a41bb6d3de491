/// A small key/value store that ranks meet at before they have each other's addresses.
///
/// Rank 0 (or a standalone store) serves it; every other rank is a client. Values are short strings
/// (addresses, nonces). Every call is bounded by a deadline.
public protocol Store: AnyObject {
    /// Sets `key` to `value`, replacing an earlier value.
    func set(_ key: String, _ value: String, deadline: Deadline) throws

    /// Waits until all `keys` are set and returns their values in order.
    /// - Throws: `ConcordError.joinTimeout`-style errors chosen by the caller via `onTimeout`, which
    ///   receives the keys still missing when the deadline passed.
    func wait(
        for keys: [String], deadline: Deadline, onTimeout: (_ missing: [String]) -> ConcordError
    ) throws -> [String]
}
