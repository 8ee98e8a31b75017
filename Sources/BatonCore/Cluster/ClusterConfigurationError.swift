/// A cluster file that cannot be used, with where and why. An operating
/// error, not a programmer's: the message is written for the admin who edits
/// the file, and says what was expected or what to do.
///
/// Wording: `cluster file line L, column C: <subject>: <problem>; <what to do>`,
/// where the subject is `node "a"`, `export "demo"` or `[timings]` when one is
/// concerned. Without a column (a missing key is reported at its table's
/// header) it reads `cluster file line L: ...`; without a place at all (a
/// rule about the whole file, or a configuration built in code)
/// `cluster configuration: ...`.
public struct ClusterConfigurationError: Error, Hashable, Sendable, CustomStringConvertible {
    /// 1-based; nil when the problem has no single place in the file.
    public var line: Int?
    /// 1-based, in Unicode scalars; nil when only the line is known.
    public var column: Int?
    /// What is wrong and what to do, without the place.
    public var message: String

    public init(_ message: String, line: Int? = nil, column: Int? = nil) {
        precondition(line != nil || column == nil, "a column needs a line")
        self.message = message
        self.line = line
        self.column = column
    }

    public var description: String {
        switch (line, column) {
        case let (line?, column?): "cluster file line \(line), column \(column): \(message)"
        case let (line?, nil): "cluster file line \(line): \(message)"
        default: "cluster configuration: \(message)"
        }
    }
}
