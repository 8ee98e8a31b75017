/// A point on the caller's monotonic clock. The core never reads a clock: the
/// runtime passes `now` into every `handle`, and tests start at zero and
/// advance by hand, so a failover sequence replays exactly.
public struct Instant: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static let zero = Instant(nanoseconds: 0)

    public static func < (a: Instant, b: Instant) -> Bool { a.nanoseconds < b.nanoseconds }

    public static func + (a: Instant, b: TimeSpan) -> Instant { Instant(nanoseconds: a.nanoseconds + b.nanoseconds) }

    /// The time from `b` to `a`; `a` must not be earlier (a monotonic clock does not run backwards).
    public static func - (a: Instant, b: Instant) -> TimeSpan {
        precondition(a >= b, "monotonic time ran backwards: \(a) < \(b)")
        return TimeSpan(nanoseconds: a.nanoseconds - b.nanoseconds)
    }

    public var description: String { "t+\(TimeSpan(nanoseconds: nanoseconds))" }
}

/// A length of time. Named `TimeSpan` rather than `Duration` so that code
/// importing BatonCore keeps the standard library's `Duration` (for
/// `Task.sleep`) unambiguous.
public struct TimeSpan: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public static let zero = TimeSpan(nanoseconds: 0)

    public static func milliseconds(_ count: UInt64) -> TimeSpan { TimeSpan(nanoseconds: count * 1_000_000) }

    public static func < (a: TimeSpan, b: TimeSpan) -> Bool { a.nanoseconds < b.nanoseconds }

    public static func + (a: TimeSpan, b: TimeSpan) -> TimeSpan { TimeSpan(nanoseconds: a.nanoseconds + b.nanoseconds) }

    public static func * (a: TimeSpan, count: Int) -> TimeSpan {
        precondition(count >= 0)
        return TimeSpan(nanoseconds: a.nanoseconds * UInt64(count))
    }

    public var description: String {
        nanoseconds % 1_000_000 == 0 ? "\(nanoseconds / 1_000_000)ms" : "\(nanoseconds)ns"
    }
}
