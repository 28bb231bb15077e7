// Package check verifies the deployment files of the repository without a
// Docker engine or a cluster: docker-compose.yml (compose-go), the
// Kubernetes kustomizations (kustomize's Go API and the k8s.io/api types),
// the Hasura metadata, the Prometheus configuration, rules and Grafana
// dashboard (promtool, and the metrics the services really export) and the
// Dockerfile (the same go build). Its tests are the checks; `make test` runs
// them.
//
// It is a module of its own so that the main module does not depend on
// Kubernetes, kustomize and compose-go.
package check
