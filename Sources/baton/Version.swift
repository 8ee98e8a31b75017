import BatonCore

/// What `baton --version` prints: the release and the protocol versions
/// this binary speaks (a mount and servers of two releases work together
/// when their ranges meet).
enum BatonVersion {
    static let release = "0.22.0"

    static var description: String {
        "baton \(release) (protocol \(Message.supportedVersions.lowerBound)-\(Message.supportedVersions.upperBound))"
    }
}
