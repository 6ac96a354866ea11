// The subscription's Event Grid system topic and one event subscription that
// delivers successful writes and deletes of VMs, NICs, NSGs and security rules
// to the `events` function, which reconciles the VM at once.
param systemTopicName string
param eventsFunctionId string

// A subscription can have only one Microsoft.Resources.Subscriptions system
// topic; where one exists already, deploy the event subscription on it instead.
resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: 'global'
  properties: {
    source: subscription().id
    topicType: 'Microsoft.Resources.Subscriptions'
  }
}

resource toFunction 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'jitaccess-events'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: eventsFunctionId
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    eventDeliverySchema: 'EventGridSchema'
    filter: {
      includedEventTypes: [
        'Microsoft.Resources.ResourceWriteSuccess'
        'Microsoft.Resources.ResourceDeleteSuccess'
      ]
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.operationName'
          values: [
            'Microsoft.Compute/virtualMachines/write'
            'Microsoft.Compute/virtualMachines/delete'
            'Microsoft.Network/networkInterfaces/write'
            'Microsoft.Network/networkInterfaces/delete'
            'Microsoft.Network/networkSecurityGroups/write'
            'Microsoft.Network/networkSecurityGroups/delete'
            'Microsoft.Network/networkSecurityGroups/securityRules/write'
            'Microsoft.Network/networkSecurityGroups/securityRules/delete'
          ]
        }
        {
          operatorType: 'StringContains'
          key: 'subject'
          values: [
            '/providers/Microsoft.Compute/virtualMachines/'
            '/providers/Microsoft.Network/networkInterfaces/'
            '/providers/Microsoft.Network/networkSecurityGroups/'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}
