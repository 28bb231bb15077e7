package check

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// scheme knows every kind the manifests may use; an object of another kind
// fails the check.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, batchv1.AddToScheme, policyv1.AddToScheme,
		autoscalingv2.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// kustomizations is base and every overlay.
func kustomizations(t *testing.T) []string {
	t.Helper()
	dirs := []string{repoPath("deployments", "k8s", "base")}
	overlays, err := filepath.Glob(repoPath("deployments", "k8s", "overlays", "*", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(overlays) == 0 {
		t.Fatal("no overlay under deployments/k8s/overlays")
	}
	for _, o := range overlays {
		dirs = append(dirs, filepath.Dir(o))
	}
	return dirs
}

// manifests is the output of one kustomize build, decoded strictly.
type manifests struct {
	dir     string
	objects []runtime.Object
}

// build runs `kustomize build dir` through kustomize's Go API and decodes
// every object into its k8s.io/api type, failing on unknown fields.
func build(t *testing.T, dir string) manifests {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := manifests{dir: dir}
	for _, r := range rm.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		gvk := r.GetGvk()
		obj, err := scheme.New(schema.GroupVersionKind{Group: gvk.Group, Version: gvk.Version, Kind: gvk.Kind})
		if err != nil {
			t.Errorf("%s: %s %s: not a known Kubernetes kind: %v", dir, gvk, r.GetName(), err)
			continue
		}
		strict, err := sigsjson.UnmarshalStrict(data, obj)
		if err != nil {
			t.Errorf("%s: %s %s: %v", dir, gvk.Kind, r.GetName(), err)
			continue
		}
		for _, e := range strict {
			t.Errorf("%s: %s %s: %v", dir, gvk.Kind, r.GetName(), e)
		}
		m.objects = append(m.objects, obj)
	}
	return m
}

func all[T runtime.Object](m manifests) []T {
	var out []T
	for _, o := range m.objects {
		if x, ok := o.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

// workload is a pod template and what runs it.
type workload struct {
	kind, name string
	replicas   int32
	meta       metav1.ObjectMeta
	pod        corev1.PodSpec
	podLabels  map[string]string
}

func workloads(m manifests) []workload {
	var out []workload
	for _, d := range all[*appsv1.Deployment](m) {
		r := int32(1)
		if d.Spec.Replicas != nil {
			r = *d.Spec.Replicas
		}
		out = append(out, workload{"Deployment", d.Name, r, d.ObjectMeta, d.Spec.Template.Spec, d.Spec.Template.Labels})
	}
	for _, s := range all[*appsv1.StatefulSet](m) {
		r := int32(1)
		if s.Spec.Replicas != nil {
			r = *s.Spec.Replicas
		}
		out = append(out, workload{"StatefulSet", s.Name, r, s.ObjectMeta, s.Spec.Template.Spec, s.Spec.Template.Labels})
	}
	for _, j := range all[*batchv1.Job](m) {
		out = append(out, workload{"Job", j.Name, 1, j.ObjectMeta, j.Spec.Template.Spec, j.Spec.Template.Labels})
	}
	return out
}

func configMap(m manifests, name string) *corev1.ConfigMap {
	for _, c := range all[*corev1.ConfigMap](m) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// generatedConfigMap is the ConfigMap a configMapGenerator made from name
// (kustomize appends a hash of the content to the name).
func generatedConfigMap(t *testing.T, m manifests, name string) *corev1.ConfigMap {
	t.Helper()
	for _, c := range all[*corev1.ConfigMap](m) {
		if rest, ok := strings.CutPrefix(c.Name, name+"-"); ok && len(rest) == 10 && !strings.Contains(rest, "-") {
			return c
		}
	}
	t.Fatalf("no ConfigMap generated from %s", name)
	return nil
}

func secret(m manifests, name string) *corev1.Secret {
	for _, s := range all[*corev1.Secret](m) {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// containerEnv is the environment a container is given: its env, and every
// key of the ConfigMaps and Secrets of its envFrom, which must exist.
func containerEnv(t *testing.T, m manifests, where string, c corev1.Container) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := configMap(m, ef.ConfigMapRef.Name)
			if cm == nil {
				t.Errorf("%s: envFrom ConfigMap %s is not in the build", where, ef.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				out[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s := secret(m, ef.SecretRef.Name)
			if s == nil {
				t.Errorf("%s: envFrom Secret %s is not in the build", where, ef.SecretRef.Name)
				continue
			}
			for k := range s.StringData {
				out[ef.Prefix+k] = "(secret)"
			}
			for k := range s.Data {
				out[ef.Prefix+k] = "(secret)"
			}
		}
	}
	for _, e := range c.Env {
		out[e.Name] = e.Value
		if r := e.ValueFrom; r != nil && r.SecretKeyRef != nil {
			s := secret(m, r.SecretKeyRef.Name)
			_, inData := s.Data[r.SecretKeyRef.Key]
			_, inString := s.StringData[r.SecretKeyRef.Key]
			if s == nil || !(inData || inString) {
				t.Errorf("%s: %s refers to key %s of Secret %s, which the build does not have", where, e.Name, r.SecretKeyRef.Key, r.SecretKeyRef.Name)
			}
			out[e.Name] = "(secret)"
		}
	}
	return out
}

// containerPort resolves a probe's or Service's port against the ports a
// container declares; 0 when it declares no such port.
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort
		}
	}
	return 0
}

func namedPort(c corev1.Container, name string) int32 {
	return containerPort(c, intstr.FromString(name))
}

// effectsBinary is the effects binary a container runs, or "".
func effectsBinary(t *testing.T, c corev1.Container) string {
	if len(c.Command) == 0 {
		return ""
	}
	if _, ok := envNames(t)[c.Command[0]]; ok {
		return c.Command[0]
	}
	return ""
}

func TestKustomize(t *testing.T) {
	for _, dir := range kustomizations(t) {
		name, _ := filepath.Rel(repoPath("deployments", "k8s"), dir)
		t.Run(name, func(t *testing.T) {
			m := build(t, dir)
			if t.Failed() {
				return
			}
			checkObjects(t, m)
			checkPods(t, m)
			checkSelectors(t, m)
			checkNetworkPolicies(t, m)
			checkMonitoring(t, m)
			checkNATS(t, m)
			if name == filepath.Join("overlays", "production") {
				checkProduction(t, m)
			}
		})
	}
}

// checkObjects: the objects the issue asks for are there, in one namespace.
func checkObjects(t *testing.T, m manifests) {
	count := map[string]int{}
	namespace := ""
	for _, o := range m.objects {
		acc, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		kind := reflect.TypeOf(o).Elem().Name()
		count[kind]++
		if kind == "Namespace" {
			namespace = o.(*corev1.Namespace).Name
			continue
		}
		ns, _ := acc["metadata"].(map[string]any)["namespace"].(string)
		if ns == "" {
			t.Errorf("%s %v has no namespace", kind, acc["metadata"].(map[string]any)["name"])
		}
	}
	for _, o := range m.objects {
		if acc, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(o); acc != nil {
			if ns, _ := acc["metadata"].(map[string]any)["namespace"].(string); ns != "" && ns != namespace {
				t.Errorf("object in namespace %s, not the build's Namespace %q", ns, namespace)
			}
		}
	}
	for kind, want := range map[string]int{
		"Namespace": 1, "Secret": 1, "Deployment": 3, "StatefulSet": 1, "Job": 1,
		"HorizontalPodAutoscaler": 1, "ServiceMonitor": 1, "PrometheusRule": 1,
	} {
		if count[kind] != want {
			t.Errorf("%d %s objects, want %d", count[kind], kind, want)
		}
	}
	for kind, least := range map[string]int{"ConfigMap": 2, "Service": 4, "PodDisruptionBudget": 4, "NetworkPolicy": 3} {
		if count[kind] < least {
			t.Errorf("%d %s objects, want at least %d", count[kind], kind, least)
		}
	}
	for _, s := range all[*corev1.Secret](m) {
		if !strings.Contains(s.Annotations["effects.run/example-values"], "true") {
			t.Errorf("Secret %s: example values must be marked (annotation effects.run/example-values)", s.Name)
		}
		for k, v := range s.StringData {
			if !strings.Contains(v, "example") {
				t.Errorf("Secret %s: %s does not look like an example value", s.Name, k)
			}
		}
	}
	hpa := all[*autoscalingv2.HorizontalPodAutoscaler](m)
	if len(hpa) == 1 && (hpa[0].Spec.ScaleTargetRef.Kind != "Deployment" || hpa[0].Spec.ScaleTargetRef.Name != "dispatcher") {
		t.Errorf("the HorizontalPodAutoscaler must scale the dispatcher Deployment, not %+v", hpa[0].Spec.ScaleTargetRef)
	}
	for _, j := range all[*batchv1.Job](m) {
		if c := j.Spec.Template.Spec.Containers; len(c) != 1 || !slices.Equal(c[0].Command, []string{"completer", "migrate"}) {
			t.Errorf("Job %s must run completer migrate", j.Name)
		}
	}
}

// checkPods: security context, resources, probes on declared ports, pinned
// images, environment names, admin ports and graceful termination.
func checkPods(t *testing.T, m manifests) {
	for _, w := range workloads(m) {
		podNonRoot := w.pod.SecurityContext != nil && w.pod.SecurityContext.RunAsNonRoot != nil && *w.pod.SecurityContext.RunAsNonRoot
		for _, c := range append(slices.Clone(w.pod.InitContainers), w.pod.Containers...) {
			where := fmt.Sprintf("%s %s container %s", w.kind, w.name, c.Name)
			sc := c.SecurityContext
			switch {
			case sc == nil:
				t.Errorf("%s: no securityContext", where)
			default:
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					t.Errorf("%s: allowPrivilegeEscalation must be false", where)
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					t.Errorf("%s: readOnlyRootFilesystem must be true", where)
				}
				if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
					t.Errorf("%s: capabilities must drop ALL and add none", where)
				}
				if !podNonRoot && (sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot) {
					t.Errorf("%s: must run as non-root (runAsNonRoot)", where)
				}
			}
			for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				if _, ok := c.Resources.Requests[res]; !ok {
					t.Errorf("%s: no %s request", where, res)
				}
				if _, ok := c.Resources.Limits[res]; !ok {
					t.Errorf("%s: no %s limit", where, res)
				}
			}
			if why := imagePinned(c.Image); why != "" {
				t.Errorf("%s: image not pinned: %s", where, why)
			}
			probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe}
			for kind, p := range probes {
				if p == nil {
					if w.kind != "Job" && kind != "startup" {
						t.Errorf("%s: no %s probe", where, kind)
					}
					continue
				}
				var port intstr.IntOrString
				switch {
				case p.HTTPGet != nil:
					port = p.HTTPGet.Port
				case p.TCPSocket != nil:
					port = p.TCPSocket.Port
				case p.GRPC != nil:
					port = intstr.FromInt32(p.GRPC.Port)
				default:
					continue
				}
				if containerPort(c, port) == 0 {
					t.Errorf("%s: %s probe on port %s, which the container does not declare", where, kind, port.String())
				}
			}
			bin := effectsBinary(t, c)
			if bin == "" {
				continue
			}
			env := containerEnv(t, m, where, c)
			checkEnvNames(t, where, bin, keys(env), nil)
			if w.kind == "Job" {
				continue
			}
			admin := namedPort(c, "admin")
			if want := int32(defaultAdminPorts[bin]); env["EFFECTS_ADMIN_ADDR"] != "" {
				want = int32(portOf(t, where+" EFFECTS_ADMIN_ADDR", env["EFFECTS_ADMIN_ADDR"]))
				if admin != want {
					t.Errorf("%s: port admin is %d, EFFECTS_ADMIN_ADDR listens on %d", where, admin, want)
				}
			} else if admin != want {
				t.Errorf("%s: port admin is %d, the binary's default admin port is %d", where, admin, want)
			}
			for kind, p := range probes {
				if p != nil && (p.HTTPGet == nil || containerPort(c, p.HTTPGet.Port) != admin) {
					t.Errorf("%s: %s probe must ask the admin port", where, kind)
				}
			}
			if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path != "/healthz" {
				t.Errorf("%s: liveness probe must ask /healthz", where)
			}
			if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Errorf("%s: readiness probe must ask /readyz", where)
			}
			if bin == "ingest" {
				addr := cmpOr(env["EFFECTS_HTTP_ADDR"], ":8080")
				if got := namedPort(c, "http"); got != int32(portOf(t, where, addr)) {
					t.Errorf("%s: port http is %d, EFFECTS_HTTP_ADDR is %s", where, got, addr)
				}
			}
			// Graceful termination: the grace period covers the preStop
			// pause and the services' shutdown timeout, with room to exit.
			need := shutdownTimeout(t, where, env) + exitMargin
			if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Sleep != nil {
				need += time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
			}
			if g := w.pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second < need {
				t.Errorf("%s: terminationGracePeriodSeconds must be at least %s (EFFECTS_SHUTDOWN_TIMEOUT, preStop and %s to exit)", where, need, exitMargin)
			}
		}
	}
}

func selects(sel map[string]string, podLabels map[string]string) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(podLabels))
}

func labelSelects(t *testing.T, where string, sel *metav1.LabelSelector, podLabels map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return false
	}
	return s.Matches(labels.Set(podLabels))
}

// checkSelectors: every Service, PodDisruptionBudget and HPA finds what it
// is for, and a Service's target ports exist on the pods it selects.
func checkSelectors(t *testing.T, m manifests) {
	ws := workloads(m)
	for _, s := range all[*corev1.Service](m) {
		found := false
		for _, w := range ws {
			if !selects(s.Spec.Selector, w.podLabels) {
				continue
			}
			found = true
			for _, p := range s.Spec.Ports {
				ok := false
				for _, c := range w.pod.Containers {
					ok = ok || containerPort(c, p.TargetPort) != 0
				}
				if !ok {
					t.Errorf("Service %s port %s: target port %s is not declared by %s %s", s.Name, p.Name, p.TargetPort.String(), w.kind, w.name)
				}
			}
		}
		if !found {
			t.Errorf("Service %s selects no pods", s.Name)
		}
	}
	for _, p := range all[*policyv1.PodDisruptionBudget](m) {
		found := false
		for _, w := range ws {
			found = found || (w.kind != "Job" && labelSelects(t, "PodDisruptionBudget "+p.Name, p.Spec.Selector, w.podLabels))
		}
		if !found {
			t.Errorf("PodDisruptionBudget %s selects no pods", p.Name)
		}
	}
	for _, w := range ws {
		if w.kind == "Job" {
			continue
		}
		covered := false
		for _, p := range all[*policyv1.PodDisruptionBudget](m) {
			covered = covered || labelSelects(t, "PodDisruptionBudget "+p.Name, p.Spec.Selector, w.podLabels)
		}
		if !covered {
			t.Errorf("%s %s has no PodDisruptionBudget", w.kind, w.name)
		}
	}
	for _, h := range all[*autoscalingv2.HorizontalPodAutoscaler](m) {
		found := false
		for _, w := range ws {
			found = found || (w.kind == h.Spec.ScaleTargetRef.Kind && w.name == h.Spec.ScaleTargetRef.Name)
		}
		if !found {
			t.Errorf("HorizontalPodAutoscaler %s scales %s %s, which is not in the build", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
		}
	}
}

// peerIs reports whether a NetworkPolicy peer is exactly the pods named
// app (any namespace, by app.kubernetes.io/name).
func peerIs(p networkingv1.NetworkPolicyPeer, app string) bool {
	return p.IPBlock == nil && p.PodSelector != nil && len(p.PodSelector.MatchExpressions) == 0 &&
		reflect.DeepEqual(p.PodSelector.MatchLabels, map[string]string{"app.kubernetes.io/name": app})
}

// checkNetworkPolicies: ingress is denied by default; only Hasura reaches
// the ingest's webhook and only Prometheus the admin ports.
func checkNetworkPolicies(t *testing.T, m manifests) {
	nps := all[*networkingv1.NetworkPolicy](m)
	defaultDeny := false
	for _, np := range nps {
		if len(np.Spec.PodSelector.MatchLabels) == 0 && len(np.Spec.PodSelector.MatchExpressions) == 0 &&
			slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && len(np.Spec.Ingress) == 0 {
			defaultDeny = true
		}
	}
	if !defaultDeny {
		t.Error("no NetworkPolicy denies ingress to every pod by default")
	}
	for _, w := range workloads(m) {
		for _, c := range w.pod.Containers {
			bin := effectsBinary(t, c)
			if bin == "" || w.kind == "Job" {
				continue
			}
			guarded := map[int32]string{namedPort(c, "admin"): "prometheus"}
			if bin == "ingest" {
				guarded[namedPort(c, "http")] = "hasura"
			}
			reached := map[int32]bool{}
			for _, np := range nps {
				if !labelSelects(t, "NetworkPolicy "+np.Name, &np.Spec.PodSelector, w.podLabels) {
					continue
				}
				for _, rule := range np.Spec.Ingress {
					var ports []int32
					for _, p := range rule.Ports {
						if p.Port == nil {
							t.Errorf("NetworkPolicy %s: a rule for every port reaches %s %s", np.Name, w.kind, w.name)
							continue
						}
						if cp := containerPort(c, *p.Port); cp != 0 {
							ports = append(ports, cp)
						}
					}
					if len(rule.Ports) == 0 {
						t.Errorf("NetworkPolicy %s: a rule for every port reaches %s %s", np.Name, w.kind, w.name)
					}
					for _, port := range ports {
						app, ok := guarded[port]
						if !ok {
							continue
						}
						if len(rule.From) == 0 {
							t.Errorf("NetworkPolicy %s lets anyone reach %s %s port %d (only %s may)", np.Name, w.kind, w.name, port, app)
						}
						for _, peer := range rule.From {
							if !peerIs(peer, app) {
								t.Errorf("NetworkPolicy %s lets %+v reach %s %s port %d (only %s may)", np.Name, peer, w.kind, w.name, port, app)
							}
						}
						reached[port] = true
					}
				}
			}
			for port, app := range guarded {
				if !reached[port] {
					t.Errorf("no NetworkPolicy lets %s reach %s %s port %d", app, w.kind, w.name, port)
				}
			}
		}
	}
}

// checkMonitoring: the ServiceMonitor scrapes the admin port of every
// effects Service, and the PrometheusRule carries the repository's rules.
func checkMonitoring(t *testing.T, m manifests) {
	sms := all[*monitoringv1.ServiceMonitor](m)
	scraped := map[string]bool{}
	for _, sm := range sms {
		for _, s := range all[*corev1.Service](m) {
			if !labelSelects(t, "ServiceMonitor "+sm.Name, &sm.Spec.Selector, s.Labels) {
				continue
			}
			for _, ep := range sm.Spec.Endpoints {
				for _, p := range s.Spec.Ports {
					if p.Name == ep.Port && ep.Port != "" {
						if p.Name != "admin" {
							t.Errorf("ServiceMonitor %s scrapes port %s of Service %s, not its admin port", sm.Name, p.Name, s.Name)
						}
						scraped[s.Name] = true
						if ep.Path != "" && ep.Path != "/metrics" {
							t.Errorf("ServiceMonitor %s: path %s, want /metrics", sm.Name, ep.Path)
						}
					}
				}
			}
		}
	}
	// The rules select on job="ingest|dispatcher|completer": the operator
	// names the job after the Service.
	for _, name := range []string{"ingest", "dispatcher", "completer"} {
		if !scraped[name] {
			t.Errorf("no ServiceMonitor scrapes the admin port of Service %s", name)
		}
	}

	jsonRules, err := sigsyaml.YAMLToJSON(readRepoFile(t, "deployments", "prometheus", "rules", "effects.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var want monitoringv1.PrometheusRuleSpec
	strict, err := sigsjson.UnmarshalStrict(jsonRules, &want)
	if err != nil || len(strict) > 0 {
		t.Fatalf("rules/effects.yml as a PrometheusRule spec: %v %v", err, strict)
	}
	for _, pr := range all[*monitoringv1.PrometheusRule](m) {
		if !reflect.DeepEqual(pr.Spec, want) {
			got, _ := json.MarshalIndent(pr.Spec, "", " ")
			t.Errorf("PrometheusRule %s differs from deployments/prometheus/rules/effects.yml; copy the groups over\n%s", pr.Name, got)
		}
	}
}

// checkNATS: a 3-node JetStream cluster whose configuration the NATS server
// accepts, with a route to every node, and services that ask no more
// stream replicas than there are nodes.
func checkNATS(t *testing.T, m manifests) {
	var sts *appsv1.StatefulSet
	for _, s := range all[*appsv1.StatefulSet](m) {
		if s.Name == "nats" {
			sts = s
		}
	}
	if sts == nil {
		t.Fatal("no StatefulSet nats")
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("StatefulSet nats: want 3 replicas")
	}
	if len(sts.Spec.VolumeClaimTemplates) == 0 {
		t.Error("StatefulSet nats: no persistent volume for JetStream")
	}
	c := sts.Spec.Template.Spec.Containers[0]
	if want := "nats:" + natsServerVersion(t) + "-alpine"; c.Image != want {
		t.Errorf("StatefulSet nats: image %s, want %s (the version the tests embed, go.mod)", c.Image, want)
	}
	var cm *corev1.ConfigMap
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil {
			cm = configMap(m, v.ConfigMap.Name)
		}
	}
	if cm == nil || cm.Data["nats.conf"] == "" {
		t.Fatal("StatefulSet nats: no ConfigMap with nats.conf mounted")
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(cm.Data["nats.conf"]), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POD_NAME", sts.Name+"-1")
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats.conf: the NATS server refuses it: %v", err)
	}
	if opts.ServerName != sts.Name+"-1" || !opts.JetStream || opts.Cluster.Name == "" {
		t.Errorf("nats.conf: server_name %q, jetstream %t, cluster %q: want the pod's name, JetStream and a cluster", opts.ServerName, opts.JetStream, opts.Cluster.Name)
	}
	var routes []string
	for _, r := range opts.Routes {
		routes = append(routes, r.Host)
	}
	var want []string
	for i := range *sts.Spec.Replicas {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", sts.Name, i, sts.Spec.ServiceName, opts.Cluster.Port))
	}
	if !slices.Equal(routes, want) {
		t.Errorf("nats.conf routes %v, want one to every node: %v", routes, want)
	}
	for _, s := range all[*corev1.Service](m) {
		if s.Name == sts.Spec.ServiceName && (s.Spec.ClusterIP != "None" || !s.Spec.PublishNotReadyAddresses) {
			t.Errorf("Service %s: the routes' headless Service must have clusterIP None and publish addresses before pods are ready", s.Name)
		}
	}
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Error("StatefulSet nats: podManagementPolicy must be Parallel (the cluster needs a quorum to become ready)")
	}
	// Stream replicas fit the cluster.
	if cm := generatedConfigMap(t, m, "effects-common"); cm != nil {
		if r, err := strconv.Atoi(cmpOr(cm.Data["EFFECTS_STREAM_REPLICAS"], "1")); err != nil || r < 1 || int32(r) > *sts.Spec.Replicas {
			t.Errorf("EFFECTS_STREAM_REPLICAS=%q: want 1 to %d (the NATS nodes)", cm.Data["EFFECTS_STREAM_REPLICAS"], *sts.Spec.Replicas)
		}
	}
}

// checkProduction: three replicas of every service and R3 streams.
func checkProduction(t *testing.T, m manifests) {
	for _, d := range all[*appsv1.Deployment](m) {
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 3 {
			t.Errorf("production: Deployment %s must have at least 3 replicas", d.Name)
		}
	}
	for _, h := range all[*autoscalingv2.HorizontalPodAutoscaler](m) {
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 3 {
			t.Errorf("production: HorizontalPodAutoscaler %s must keep at least 3 replicas", h.Name)
		}
	}
	if cm := generatedConfigMap(t, m, "effects-common"); cm.Data["EFFECTS_STREAM_REPLICAS"] != "3" {
		t.Error("production: EFFECTS_STREAM_REPLICAS must be 3")
	}
}
