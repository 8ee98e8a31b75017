import Foundation
import Logging
import NIOConcurrencyHelpers

/// One JSON object per line, for log collectors (`--log-format json`):
/// `time`, `level`, `label` and `message` first, then the metadata as
/// fields of their own, so a collector can index `export`, `node`, `epoch`
/// and `cause` without parsing the message.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private let write: @Sendable (String) -> Void

    public static let reservedKeys: Set<String> = ["time", "level", "label", "message"]

    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let (level, message, fields) = (event.level, event.message, fields(of: event))
        var text = "{\"time\":\(Self.quoted(Self.timestamp()))"
        text += ",\"level\":\(Self.quoted(level.rawValue)),\"label\":\(Self.quoted(label))"
        text += ",\"message\":\(Self.quoted(message.description))"
        for key in fields.keys.sorted() {
            // A metadata key never hides one of the line's own fields.
            let name = Self.reservedKeys.contains(key) ? "metadata_" + key : key
            text += ",\(Self.quoted(name)):\(Self.json(fields[key]!))"
        }
        write(text + "}\n")
    }

    static func json(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let text): return quoted(text)
        case .stringConvertible(let convertible): return quoted(convertible.description)
        case .array(let values): return "[" + values.map(json).joined(separator: ",") + "]"
        case .dictionary(let values):
            return "{" + values.keys.sorted().map { "\(quoted($0)):\(json(values[$0]!))" }.joined(separator: ",") + "}"
        }
    }

    static func quoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// UTC with milliseconds: lines from two nodes sort into one timeline.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
                      parts.tm_hour, parts.tm_min, parts.tm_sec, now.tv_nsec / 1_000_000)
    }

    private static let lock = NIOLock()

    /// One write(2) per line, under a lock: lines of two threads never interleave.
    public static let standardError: @Sendable (String) -> Void = { line in
        lock.withLock {
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
                if written < 0 && errno == EINTR { continue }
                if written <= 0 { return }
                offset += written
            }
        }
    }
}

/// Lines to the system log (`/dev/log`: journald or a syslog daemon), for a
/// mount in the background that was given no log file.
public struct SyslogLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    /// `identifier` names the lines in the system log (kept for the process's life, as openlog(3) needs).
    public init(label: String, identifier: String) {
        self.label = label
        Self.open(identifier)
    }

    public static let socketPath = "/dev/log"
    private static let lock = NIOLock()
    nonisolated(unsafe) private static var identifier: UnsafeMutablePointer<CChar>?

    private static func open(_ name: String) {
        lock.withLock {
            guard identifier == nil else { return }
            identifier = strdup(name)
            openlog(identifier, LOG_PID | LOG_NDELAY, LOG_DAEMON)
        }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let (level, message, fields) = (event.level, event.message, fields(of: event))
        let tail = fields.keys.sorted().map { "\($0)=\(fields[$0]!)" }.joined(separator: " ")
        let text = tail.isEmpty ? "\(message)" : "\(message) \(tail)"
        text.withCString { pointer in
            withVaList([pointer]) { vsyslog(Self.priority(level), "%s", $0) }
        }
    }

    static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .trace, .debug: LOG_DEBUG
        case .info: LOG_INFO
        case .notice: LOG_NOTICE
        case .warning: LOG_WARNING
        case .error: LOG_ERR
        case .critical: LOG_CRIT
        }
    }
}

extension LogHandler {
    /// The handler's metadata, with the line's own over it.
    fileprivate func fields(of event: LogEvent) -> Logger.Metadata {
        var fields = metadata
        if let explicit = event.metadata { fields.merge(explicit) { $1 } }
        return fields
    }
}
