// RankProcess.swift — starting one rank with posix_spawn(3).
//
// Each rank gets:
// - its own process group (POSIX_SPAWN_SETPGROUP, pgid = its pid), so that kill(-pid, sig) reaches
//   the rank and everything it started, and so that ^C at a terminal reaches only the launcher, which
//   then decides what the ranks get;
// - an empty signal mask and default dispositions for every signal (POSIX_SPAWN_SETSIGMASK,
//   POSIX_SPAWN_SETSIGDEF), undoing the launcher's blocked SIGCHLD/SIGINT/SIGTERM/SIGHUP and ignored
//   SIGPIPE;
// - stdin from /dev/null (a rank in a background process group that read the terminal would be stopped
//   by SIGTTIN), stdout and stderr on two pipes whose read ends stay with the launcher;
// - the launcher's environment with the CONCORD_* variables of `LaunchPlan.environment(forRank:)`
//   replacing any inherited ones.
//
// All pipe ends are created close-on-exec, so a rank inherits only its own two write ends (dup2'd onto
// 1 and 2), never another rank's pipes — otherwise one rank's pipe would not reach end-of-file until
// every rank had exited. The launcher closes its copies of the write ends right after the spawn.
// Inherited environment entries are copied byte for byte, without a round trip through String.

import Glibc

/// A running rank, as seen by the launcher.
struct RankProcess {
    /// The rank, 0..<N.
    let rank: Int
    /// The rank's pid, which is also its process group id.
    let pid: pid_t
    /// The read end of the pipe on the rank's stdout (non-blocking, close-on-exec).
    let stdoutFD: Int32
    /// The read end of the pipe on the rank's stderr (non-blocking, close-on-exec).
    let stderrFD: Int32

    /// Starts rank `rank` of `plan`. Calls pipe(2), fcntl(2) and posix_spawn(3).
    ///
    /// - Throws: `SystemError` if a pipe cannot be made or posix_spawn fails; nothing is left open then.
    static func spawn(_ plan: LaunchPlan, rank: Int) throws(SystemError) -> RankProcess {
        let stdoutPipe = try makePipe()
        let stderrPipe: (read: Int32, write: Int32)
        do throws(SystemError) {
            stderrPipe = try makePipe()
        } catch {
            close(stdoutPipe.read)
            close(stdoutPipe.write)
            throw error
        }
        defer {
            close(stdoutPipe.write)
            close(stderrPipe.write)
        }
        do throws(SystemError) {
            let pid = try spawnProcess(
                plan, rank: rank, stdout: stdoutPipe.write, stderr: stderrPipe.write)
            return RankProcess(rank: rank, pid: pid, stdoutFD: stdoutPipe.read, stderrFD: stderrPipe.read)
        } catch {
            close(stdoutPipe.read)
            close(stderrPipe.read)
            throw error
        }
    }

    /// A close-on-exec pipe whose read end is non-blocking. Calls pipe(2) and fcntl(2).
    ///
    /// pipe2(2) would set close-on-exec atomically, but glibc declares it only under _GNU_SOURCE, which
    /// Swift's Glibc module does not define. Setting the flag afterwards is safe here because the
    /// launcher has a single thread: no spawn can happen between the two calls.
    private static func makePipe() throws(SystemError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        try systemCall("pipe") { pipe(&ends) }
        do throws(SystemError) {
            for fd in ends {
                try systemCall("fcntl(F_SETFD)") { fcntl(fd, F_SETFD, FD_CLOEXEC) }
            }
            let flags = try systemCall("fcntl(F_GETFL)") { fcntl(ends[0], F_GETFL) }
            try systemCall("fcntl(F_SETFL)") { fcntl(ends[0], F_SETFL, flags | O_NONBLOCK) }
        } catch {
            close(ends[0])
            close(ends[1])
            throw error
        }
        return (ends[0], ends[1])
    }

    private static func spawnProcess(
        _ plan: LaunchPlan, rank: Int, stdout: Int32, stderr: Int32
    ) throws(SystemError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        try check("posix_spawn_file_actions_init", posix_spawn_file_actions_init(&actions))
        defer { posix_spawn_file_actions_destroy(&actions) }
        try check(
            "posix_spawn_file_actions_addopen",
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0))
        try check(
            "posix_spawn_file_actions_adddup2", posix_spawn_file_actions_adddup2(&actions, stdout, 1))
        try check(
            "posix_spawn_file_actions_adddup2", posix_spawn_file_actions_adddup2(&actions, stderr, 2))

        var attributes = posix_spawnattr_t()
        try check("posix_spawnattr_init", posix_spawnattr_init(&attributes))
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        try check("posix_spawnattr_setsigmask", posix_spawnattr_setsigmask(&attributes, &noSignals))
        try check(
            "posix_spawnattr_setsigdefault", posix_spawnattr_setsigdefault(&attributes, &allSignals))
        try check("posix_spawnattr_setpgroup", posix_spawnattr_setpgroup(&attributes, 0))
        let flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        try check("posix_spawnattr_setflags", posix_spawnattr_setflags(&attributes, Int16(flags)))

        let argv = CStringArray(plan.arguments.map { strdup($0) })
        let envp = CStringArray(environment(for: plan, rank: rank))
        var pid: pid_t = 0
        let result = CPUBinding.withCPUs(plan.cpuSlices?[rank]) {
            argv.withPointer { argvPointer in
                envp.withPointer { envpPointer in
                    posix_spawn(&pid, plan.executable.path, &actions, &attributes, argvPointer, envpPointer)
                }
            }
        }
        try check("posix_spawn", result)
        return pid
    }

    /// The launcher's environment minus inherited CONCORD_* contract variables, plus this rank's.
    /// Every entry is a fresh malloc'd copy.
    private static func environment(for plan: LaunchPlan, rank: Int) -> [UnsafeMutablePointer<CChar>?] {
        let replaced = plan.replacedNames.map { Array("\($0)=".utf8CString.dropLast()) }
        var entries: [UnsafeMutablePointer<CChar>?] = []
        var cursor = environ
        while let entry = cursor.pointee {
            let isReplaced = replaced.contains { name in strncmp(entry, name, name.count) == 0 }
            if !isReplaced { entries.append(strdup(entry)) }
            cursor += 1
        }
        for (name, value) in plan.environment(forRank: rank) {
            entries.append(strdup("\(name)=\(value)"))
        }
        return entries
    }
}

/// A NULL-terminated array of malloc'd C strings, freed on deinit: the shape of argv and envp.
private final class CStringArray {
    private var pointers: [UnsafeMutablePointer<CChar>?]

    /// Takes ownership of `strings`, which must come from malloc (strdup).
    init(_ strings: [UnsafeMutablePointer<CChar>?]) {
        precondition(!strings.contains(nil), "strdup failed")
        pointers = strings + [nil]
    }

    deinit {
        for pointer in pointers { free(pointer) }
    }

    func withPointer<R>(_ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
