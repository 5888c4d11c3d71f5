import FoundationEssentials
import Logging
import SidecarModel

/// `backup-sidecar validate`: the checks file mode makes at startup, run offline and all of
/// them (startup stops at the first problem; an operator fixing files wants the whole list).
package enum ConfigValidation {
    package struct Finding: Equatable, Sendable {
        package var isError: Bool
        var source: String
        var message: String
        package var line: String { "\(isError ? "error" : "warning"): \(source): \(message)" }
    }

    package static func run(serviceFile: String?, intentionsFile: String?, certificates: (cert: String?, key: String?, ca: String?),
                           trustDomain: String?, allowRemoteUpstreams: Bool, now: Date = Date()) -> [Finding] {
        var findings: [Finding] = []
        let logger = Logger(label: "backup-sidecar.validate") // the sources log nothing until they watch
        func error(_ source: String, _ message: String) { findings.append(Finding(isError: true, source: source, message: message)) }
        func warning(_ source: String, _ message: String) { findings.append(Finding(isError: false, source: source, message: message)) }
        let certificatePaths = [certificates.cert, certificates.key, certificates.ca]
        if serviceFile == nil && intentionsFile == nil && certificatePaths.allSatisfy({ $0 == nil }) {
            error("command line", "nothing to validate: give --service-file, --intentions-file and/or --cert, --key and --ca")
        }
        if let serviceFile {
            do {
                let definition = try ProxyDefinition.load(path: serviceFile)
                for skipped in definition.skippedUpstreams { error(serviceFile, skipped) }
                do {
                    try definition.validateUpstreamBinds(allowNonLoopback: allowRemoteUpstreams)
                } catch let problem {
                    error(serviceFile, describe(problem, source: serviceFile))
                }
            } catch let problem {
                error(serviceFile, describe(problem, source: serviceFile))
            }
        }
        if let intentionsFile {
            do {
                // The same loading file mode does at startup.
                let set = try IntentionsFileSource(path: intentionsFile, defaultAction: .deny, logger: logger, apply: { _ in }).load()
                for condition in set.unevaluableConditions { warning(intentionsFile, "\(condition) (decides deny)") }
            } catch let problem {
                error(intentionsFile, describe(problem, source: intentionsFile))
            }
        }
        if certificatePaths.contains(where: { $0 != nil }) {
            if let cert = certificates.cert, let key = certificates.key, let ca = certificates.ca {
                do {
                    let credentials = try CertificateFileSource(certificatePath: cert, keyPath: key, rootsPath: ca, trustDomain: trustDomain,
                                                                logger: logger, apply: { _ in }).load()
                    let left = credentials.leaf.notAfter.timeIntervalSince(now)
                    if left < 86_400 {
                        warning(cert, "the leaf expires in \(Int(left / 60)) minutes (\(credentials.leaf.notAfter))")
                    }
                } catch let problem {
                    error(cert, describe(problem, source: cert))
                }
            } else {
                error("command line", "give --cert, --key and --ca together")
            }
        }
        return findings
    }

    /// The message without repeating the file name the finding already carries.
    static func describe(_ error: any Error, source: String) -> String {
        let text = "\(error)"
        return text.hasPrefix(source + ": ") ? String(text.dropFirst(source.count + 2)) : text
    }
}
