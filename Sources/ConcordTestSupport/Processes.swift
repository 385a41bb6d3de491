import Foundation

/// Where the package's built executables are: `$CONCORD_BIN_DIR`, else beside the running test bundle,
/// else `.build/debug` of the package that holds this file.
public func builtExecutable(_ name: String, file: String = #filePath) -> String? {
    var directories: [String] = []
    if let dir = ProcessInfo.processInfo.environment["CONCORD_BIN_DIR"] { directories.append(dir) }
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
    directories.append(bundle.deletingLastPathComponent().path)
    directories.append(bundle.deletingLastPathComponent().deletingLastPathComponent().path)
    var root = URL(fileURLWithPath: file)
    while root.path != "/" && !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path)
    {
        root.deleteLastPathComponent()
    }
    directories.append(root.appendingPathComponent(".build/debug").path)
    return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// A child process whose output goes to temporary files, with a bounded wait and a kill that never
/// leaves it behind (it runs in its own process group, and the group is killed).
public final class ChildProcess: @unchecked Sendable {
    public let process = Process()
    private let outURL: URL
    private let errURL: URL

    /// Starts `path` with `arguments`; `environment` is added to this process's environment.
    public init(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        let dir = FileManager.default.temporaryDirectory
        let id = UUID().uuidString
        outURL = dir.appendingPathComponent("concord-test-\(id).out")
        errURL = dir.appendingPathComponent("concord-test-\(id).err")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: outURL)
        process.standardError = try FileHandle(forWritingTo: errURL)
        try process.run()
        setpgid(process.processIdentifier, process.processIdentifier)
    }

    deinit {
        kill()
        try? FileManager.default.removeItem(at: outURL)
        try? FileManager.default.removeItem(at: errURL)
    }

    public var pid: Int32 { process.processIdentifier }

    /// Waits at most `seconds`; returns whether the process ended.
    @discardableResult
    public func wait(seconds: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return !process.isRunning
    }

    /// Waits at most `seconds` without blocking a thread; returns whether the process ended.
    public func exited(within seconds: Double) async -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while process.isRunning && Date() < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        if process.isRunning { return false }
        process.waitUntilExit()  // returns at once; makes sure the termination status is recorded
        return true
    }

    /// The exit status, or nil while running or when it ended by a signal.
    public var exitStatus: Int32? {
        guard !process.isRunning, process.terminationReason == .exit else { return nil }
        return process.terminationStatus
    }

    /// The signal that ended it, if one did.
    public var terminatingSignal: Int32? {
        guard !process.isRunning, process.terminationReason == .uncaughtSignal else { return nil }
        return process.terminationStatus
    }

    public func signal(_ number: Int32) {
        if process.isRunning { Glibc.kill(pid, number) }
    }

    /// SIGKILLs the process and its group, and reaps it.
    public func kill() {
        guard process.isRunning else { return }
        Glibc.kill(-pid, SIGKILL)
        Glibc.kill(pid, SIGKILL)
        wait(seconds: 5)
    }

    public var stdout: String { (try? String(contentsOf: outURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: errURL, encoding: .utf8)) ?? "" }
}
