// What a node needs to speak for a job: the job id, and either the job secret's derived keys or an
// explicit statement that the job runs without one.
//
//   Authentication.secret(s)  beacons carry an HMAC-SHA256 tag (beacon key); TCP links prove the secret
//                             with a challenge-response (handshake key). Nodes without it cannot join.
//   Authentication.insecure   beacons carry no tag, handshakes no proofs. Anyone on the network can join
//                             or impersonate a node: for a trusted network and for tests only.
//
// A secure node refuses an insecure one and the reverse, with a message saying which side lacks what, so a
// forgotten --secret-file never makes a half-secure job. Keys are derived once here (see JobSecret).

/// Whether a job proves membership with a shared secret.
public enum Authentication: Sendable, CustomStringConvertible {
    /// No secret: beacons and handshakes are not authenticated.
    case insecure
    /// Every node holds this secret.
    case secret(JobSecret)

    /// "insecure (no job secret)" or where the secret came from; never the secret.
    public var description: String {
        switch self {
        case .insecure: return "insecure (no job secret)"
        case .secret(let s): return s.description
        }
    }
}

/// A job id together with the keys (or their absence) used to authenticate beacons and links.
///
/// Printing, debug-printing or dumping it shows the job id and the mode, never the secret or the keys.
public struct JobCredentials: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The job every beacon and handshake must name.
    public let jobID: JobID
    /// How the job authenticates.
    public let authentication: Authentication
    /// The beacon MAC key; nil when insecure.
    let beaconKey: [UInt8]?
    /// The handshake proof key; nil when insecure.
    let handshakeKey: [UInt8]?
    /// The key of membership and RTT datagrams; nil when insecure.
    let unicastKey: [UInt8]?

    /// Credentials for job `jobID`, deriving the keys from the secret when there is one.
    public init(jobID: JobID, authentication: Authentication) {
        self.jobID = jobID
        self.authentication = authentication
        switch authentication {
        case .insecure:
            beaconKey = nil
            handshakeKey = nil
            unicastKey = nil
        case .secret(let secret):
            beaconKey = secret.derivedKey(for: .beacon, job: jobID)
            handshakeKey = secret.derivedKey(for: .handshake, job: jobID)
            unicastKey = secret.derivedKey(for: .unicast, job: jobID)
        }
    }

    /// Credentials for the job called `jobName` (its id is `JobID(jobName:)`).
    public init(jobName: String, authentication: Authentication) {
        self.init(jobID: JobID(jobName: jobName), authentication: authentication)
    }

    /// True when the job has a secret.
    public var isSecure: Bool { beaconKey != nil }

    /// "job 5b1e... (secure)" or "job 5b1e... (insecure)"; never the secret.
    public var description: String { "job \(jobID) (\(isSecure ? "secure" : "insecure"))" }

    /// The same as `description`: keys are not shown in debug output.
    public var debugDescription: String { "JobCredentials(\(description), keys redacted)" }

    /// A mirror without the keys, so `dump` and debuggers do not show them.
    public var customMirror: Mirror {
        Mirror(self, children: ["jobID": jobID, "authentication": authentication], displayStyle: .struct)
    }
}
