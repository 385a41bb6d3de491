// The one seam to libuv's return codes: every `uv_*` call whose result can fail goes through `uvCheck`,
// which turns a negative return into a `ConcordError.system` carrying libuv's error name and text.
internal import CLibUV
import ConcordCore

/// libuv's name and text for an error code, e.g. ("ECONNREFUSED", "connection refused").
func uvErrorText(_ code: Int32) -> (name: String, message: String) {
    (String(cString: uv_err_name(code)), String(cString: uv_strerror(code)))
}

/// Throws `ConcordError.system` when `code` is negative; returns it otherwise.
@discardableResult
func uvCheck(_ code: Int32, _ call: String, rank: Int) throws -> Int32 {
    if code < 0 {
        let (name, message) = uvErrorText(code)
        throw ConcordError.system(rank: rank, call: call, code: code, message: "\(name): \(message)")
    }
    return code
}

/// A libuv code that signals the peer went away (as opposed to a local programming or resource problem).
func uvIsDisconnect(_ code: Int32) -> Bool {
    code == UV_EOF.rawValue || code == UV_ECONNRESET.rawValue || code == UV_EPIPE.rawValue
        || code == UV_ETIMEDOUT.rawValue || code == UV_ECONNABORTED.rawValue || code == UV_ENOTCONN.rawValue
        || code == UV_EHOSTUNREACH.rawValue || code == UV_ENETUNREACH.rawValue
}

/// The names of the handle types, for leak reports.
func uvHandleTypeName(_ handle: UnsafeMutablePointer<uv_handle_t>) -> String {
    String(cString: uv_handle_type_name(handle.pointee.type))
}

extension UnsafeMutablePointer {
    /// The same memory seen as libuv's base handle type (every libuv handle begins with `uv_handle_t`).
    var asHandle: UnsafeMutablePointer<uv_handle_t> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: uv_handle_t.self)
    }
    /// The same memory seen as a stream (for `uv_tcp_t`).
    var asStream: UnsafeMutablePointer<uv_stream_t> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: uv_stream_t.self)
    }
}
