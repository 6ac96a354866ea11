// One target subscription: jitaccess's custom role, assigned to its identity at
// subscription scope (the handler lists VMs, NICs and VNets subscription-wide),
// and the Event Grid system topic that reports VM and NSG changes.
targetScope = 'subscription'

param location string
param principalId string
param roleName string
param actions array
param eventsResourceGroupName string
param deployEventSubscription bool
param eventsFunctionId string
param systemTopicName string

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, roleName)
  properties: {
    // Custom role names are unique per tenant: one role per subscription.
    roleName: '${roleName} ${subscription().subscriptionId}'
    description: 'jitaccess: read VMs, NICs, VNets and NSGs; write and delete NSG security rules.'
    type: 'CustomRole'
    permissions: [
      {
        actions: actions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [subscription().id]
  }
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, role.id)
  properties: {
    roleDefinitionId: role.id
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource eventsRg 'Microsoft.Resources/resourceGroups@2024-03-01' = if (deployEventSubscription) {
  name: eventsResourceGroupName
  location: location
}

module events 'events.bicep' = if (deployEventSubscription) {
  name: 'jit-events-${uniqueString(subscription().id)}'
  scope: resourceGroup(eventsResourceGroupName)
  params: {
    systemTopicName: systemTopicName
    eventsFunctionId: eventsFunctionId
  }
  dependsOn: [eventsRg]
}
