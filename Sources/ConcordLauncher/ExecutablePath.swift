// ExecutablePath.swift — finds PROGRAM the way a shell does, before anything is spawned.
//
// A name with a slash is used as given; a bare name is looked up in each PATH directory in turn (an
// empty entry means the current directory; an unset PATH means "/bin:/usr/bin", glibc's default). The
// first regular file we may execute wins; a match we may not execute is remembered so the error can
// say "permission denied" rather than "not found". Doing this up front lets `concord run` refuse a
// bad command with one clear line and the shell's exit status (127 not found, 126 not executable)
// instead of starting some ranks and then failing; posix_spawn is then given the resolved path.

import Glibc

/// A program resolved to a path that exists and is executable.
struct ExecutablePath {
    /// The path to pass to posix_spawn.
    let path: String

    /// Why a program cannot be run.
    enum LookupError: Error, CustomStringConvertible {
        /// A path with a slash that does not exist.
        case noSuchFile(String)
        /// A bare name found in no PATH directory.
        case notInPath(String)
        /// The file exists but is a directory or lacks execute permission.
        case notExecutable(String, reason: String)

        /// The shell's exit status for this failure: 127 when not found, 126 when not executable.
        var exitCode: Int32 {
            switch self {
            case .noSuchFile, .notInPath: 127
            case .notExecutable: 126
            }
        }

        var description: String {
            switch self {
            case .noSuchFile(let path): "cannot run '\(path)': \(errnoText(ENOENT))"
            case .notInPath(let name): "cannot run '\(name)': command not found in PATH"
            case .notExecutable(let path, let reason): "cannot run '\(path)': \(reason)"
            }
        }
    }

    /// Resolves `program` as a shell would.
    ///
    /// - Parameters:
    ///   - program: A path (containing "/") or a bare command name.
    ///   - searchPath: The PATH value to search; nil means glibc's default "/bin:/usr/bin".
    /// - Throws: `LookupError` naming the program and the reason.
    init(resolving program: String, searchPath: String?) throws(LookupError) {
        precondition(!program.isEmpty, "the program name is validated to be non-empty")
        if program.contains("/") {
            if let problem = Self.problem(with: program) {
                throw problem == ENOENT
                    ? .noSuchFile(program) : .notExecutable(program, reason: errnoText(problem))
            }
            path = program
            return
        }
        var firstUnusable: (path: String, problem: Int32)?
        for directory in (searchPath ?? "/bin:/usr/bin").split(
            separator: ":", omittingEmptySubsequences: false)
        {
            let candidate = directory.isEmpty ? program : "\(directory)/\(program)"
            guard let problem = Self.problem(with: candidate) else {
                path = candidate
                return
            }
            if problem != ENOENT && problem != ENOTDIR && firstUnusable == nil {
                firstUnusable = (candidate, problem)
            }
        }
        if let unusable = firstUnusable {
            throw .notExecutable(unusable.path, reason: errnoText(unusable.problem))
        }
        throw .notInPath(program)
    }

    /// Why `path` cannot be executed (an errno value), or nil if it can. Calls stat(2) and access(2).
    private static func problem(with path: String) -> Int32? {
        var info = stat()
        if stat(path, &info) != 0 { return Glibc.errno }
        if info.st_mode & S_IFMT == S_IFDIR { return EISDIR }
        if access(path, X_OK) != 0 { return Glibc.errno }
        return nil
    }
}
