package armsim

import "strings"

// callActions maps each kind of call the simulator serves to the ARM
// permission (role action) that Azure checks for it, as Microsoft's resource
// provider operations list names them. Tests hold the deployed custom role
// against the calls the service really makes, so a new kind of call without
// a permission in the role fails a test instead of a deployment.
var callActions = map[string]string{
	"virtualMachines":       "Microsoft.Compute/virtualMachines/read",
	"networkInterfaces":     "Microsoft.Network/networkInterfaces/read",
	"virtualNetworks":       "Microsoft.Network/virtualNetworks/read",
	"subnets":               "Microsoft.Network/virtualNetworks/subnets/read",
	"networkSecurityGroups": "Microsoft.Network/networkSecurityGroups/read",
	"securityRules":         "Microsoft.Network/networkSecurityGroups/securityRules/read",
	"defaultSecurityRules":  "Microsoft.Network/networkSecurityGroups/defaultSecurityRules/read",
	"operations":            "Microsoft.Network/locations/operations/read",
	"operationResults":      "Microsoft.Network/locations/operationResults/read",
}

// RoleAction returns the permission ARM checks for a call of the given kind
// (Call.Kind, e.g. "PUT securityRules"), and false for a kind it does not know.
func RoleAction(kind string) (string, bool) {
	method, typ, ok := strings.Cut(kind, " ")
	read, known := callActions[typ]
	if !ok || !known {
		return "", false
	}
	writable := typ == "networkSecurityGroups" || typ == "securityRules"
	switch {
	case method == "GET" || method == "LIST" || method == "POLL":
		return read, true
	case method == "PUT" && writable:
		return strings.TrimSuffix(read, "read") + "write", true
	case method == "DELETE" && writable:
		return strings.TrimSuffix(read, "read") + "delete", true
	}
	return "", false
}
