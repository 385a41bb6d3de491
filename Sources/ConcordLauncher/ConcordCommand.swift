// ConcordCommand.swift — the `concord` executable's entry point.
//
// Deliberately thin: it names the tool, its version and its subcommands, and nothing else. All
// behaviour lives in RunCommand (the command line) and ProcessGroup (the supervision), so that a
// future subcommand does not have to untangle them.

import ArgumentParser

@main
struct ConcordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "concord",
        abstract: "Launch and supervise the ranks of a Concord job.",
        discussion: HelpText.root,
        version: "0.1.0",
        subcommands: [RunCommand.self, PeersCommand.self])
}
