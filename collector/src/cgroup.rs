//! Finding a process's container and pod from `/proc/<pid>/cgroup`: cgroup v1 and v2, the
//! path formats of containerd, CRI-O and Docker, with the systemd and cgroupfs drivers.

/// The container a process runs in, as its cgroup path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    /// The container id (64 hex digits), as in the pod's `containerStatuses[].containerID`
    /// after the `runtime://` prefix.
    pub container_id: String,
    /// The pod's uid (with dashes), when the path is under a kubelet pod cgroup.
    pub pod_uid: Option<String>,
}

/// Parses the content of `/proc/<pid>/cgroup`. `None` for processes outside any container
/// (the host's own services, kernel threads).
pub fn parse(content: &str) -> Option<ContainerRef> {
    // v2 has one line `0::/path`; v1 has one line per controller (`4:memory:/path`). The
    // container is named the same way in each, so the first line that names one wins.
    content.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        parse_path(path)
    })
}

fn parse_path(path: &str) -> Option<ContainerRef> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let last = segments.clone().next_back()?;
    let container_id = container_id(last)?;
    let pod_uid = segments.find_map(pod_uid);
    Some(ContainerRef {
        container_id,
        pod_uid,
    })
}

/// The container id in a path's last segment: `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope` (systemd driver), `crio-<id>` or `<id>` (cgroupfs
/// driver).
fn container_id(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".scope").unwrap_or(segment);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|prefix| segment.strip_prefix(prefix))
        .unwrap_or(segment);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The pod uid in a kubelet cgroup segment: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = &segment[segment.rfind("pod")? + 3..];
    let uid = uid.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let well_formed = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    well_formed.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1b0b9c9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b";
    const UID: &str = "0c4e3b9a-7f1d-4e2b-9a8c-6d5e4f3a2b1c";

    fn expect(content: &str, pod: Option<&str>) {
        assert_eq!(
            parse(content),
            Some(ContainerRef {
                container_id: ID.into(),
                pod_uid: pod.map(str::to_owned),
            }),
            "{content}"
        );
    }

    #[test]
    fn containerd_with_systemd_driver_on_cgroup_v2() {
        let uid = UID.replace('-', "_");
        expect(
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope\n"
            ),
            Some(UID),
        );
    }

    #[test]
    fn containerd_with_cgroupfs_driver_on_cgroup_v2() {
        expect(
            &format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
            Some(UID),
        );
    }

    #[test]
    fn guaranteed_pods_have_no_qos_level() {
        let uid = UID.replace('-', "_");
        expect(
            &format!("0::/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope"),
            Some(UID),
        );
    }

    #[test]
    fn crio_with_systemd_driver_on_cgroup_v2() {
        let uid = UID.replace('-', "_");
        expect(
            &format!(
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"
            ),
            Some(UID),
        );
    }

    #[test]
    fn crio_with_cgroupfs_driver_on_cgroup_v1() {
        expect(
            &format!(
                "12:pids:/kubepods/burstable/pod{UID}/crio-{ID}\n11:memory:/kubepods/burstable/pod{UID}/crio-{ID}\n"
            ),
            Some(UID),
        );
    }

    #[test]
    fn docker_with_cgroupfs_driver_on_cgroup_v1() {
        let content = format!(
            "12:hugetlb:/kubepods/burstable/pod{UID}/{ID}\n\
             4:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        expect(&content, Some(UID));
    }

    #[test]
    fn docker_with_systemd_driver_on_cgroup_v1() {
        let uid = UID.replace('-', "_");
        expect(
            &format!(
                "3:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/docker-{ID}.scope\n"
            ),
            Some(UID),
        );
    }

    #[test]
    fn a_plain_docker_container_has_no_pod() {
        expect(&format!("0::/system.slice/docker-{ID}.scope\n"), None);
        expect(&format!("5:memory:/docker/{ID}\n"), None);
    }

    #[test]
    fn host_processes_have_no_container() {
        for content in [
            "0::/system.slice/systemd-journald.service\n",
            "0::/user.slice/user-1000.slice/session-2.scope\n",
            "0::/\n",
            "12:memory:/\n1:name=systemd:/init.scope\n",
            "0::/kubepods.slice/kubepods-burstable.slice\n",
            "",
        ] {
            assert_eq!(parse(content), None, "{content:?}");
        }
    }

    #[test]
    fn the_pod_cgroup_itself_names_no_container() {
        assert_eq!(parse(&format!("0::/kubepods/burstable/pod{UID}\n")), None);
    }
}
