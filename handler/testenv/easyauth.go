package testenv

import (
	"encoding/base64"
	"encoding/json"
)

// EasyAuth returns the headers App Service Authentication adds for a
// signed-in Entra ID caller with app roles, as name and value pairs:
// X-MS-CLIENT-PRINCIPAL (base64 of the claims, the object id and a
// "roles" claim per role) and its -ID, -NAME and -IDP companions.
func EasyAuth(id string, roles ...string) []string {
	claims := []map[string]string{{"typ": "http://schemas.microsoft.com/identity/claims/objectidentifier", "val": id}}
	for _, r := range roles {
		claims = append(claims, map[string]string{"typ": "roles", "val": r})
	}
	b, _ := json.Marshal(map[string]any{"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": "roles"})
	return []string{"X-MS-CLIENT-PRINCIPAL", base64.StdEncoding.EncodeToString(b), "X-MS-CLIENT-PRINCIPAL-ID", id,
		"X-MS-CLIENT-PRINCIPAL-NAME", id + "@example.com", "X-MS-CLIENT-PRINCIPAL-IDP", "aad"}
}
